"""Run the real Lambda functions on this machine against moto's S3/SQS/DynamoDB HTTP server.

Nothing here is a re-implementation of the functions: the very ``lambda_handler`` functions of
``functions/s3_anonymize/app.py`` and ``functions/api_anonymize/app.py`` are loaded by file path
and invoked with real event shapes, and every AWS call goes over HTTP to a local moto server
(``AWS_ENDPOINT_URL``). The input bucket notifies an SQS queue (with a DLQ) exactly as deployed,
and the S3 function is fed from that queue.

* :func:`run_local_s3_flow` — ``anonymize local-run``: upload files, let S3 notify SQS, run the
  S3 function on the messages, download the anonymized images and their reports.
* :func:`api_event` / :func:`sqs_event` — the event shapes Lambda hands the functions; the dev
  server (:mod:`anonymizer_local.server`) builds on them.

Requires the ``moto[server]`` extra (a dev dependency) and a source checkout (for ``functions/``).
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from anonymizer.aws.storage import option_metadata

from .files import plan_inputs

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"

# Serialises handler invocations: one Lambda container handles one event at a time.
invoke_lock = threading.RLock()


class FunctionOutput:
    """Where the functions' own output goes on a laptop: a log file, not the user's terminal.

    In Lambda, stdout is the log: Powertools' JSON log lines, the metrics as EMF JSON
    (``{"_aws": ...}``) and Python warnings all land in CloudWatch. Locally they would drown
    the command's own lines, so while a function loads or runs, stdout and warnings go to
    ``path`` (appended). ``path=None`` leaves them alone (tests read them from pytest's capture).
    Invocations are serialised (:data:`invoke_lock`), so swapping ``sys.stdout`` is safe.
    """

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else None
        self._stream: Any = None

    @contextlib.contextmanager
    def captured(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        if self._stream is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = self.path.open("a", encoding="utf-8")
        stream = self._stream

        def to_log(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
            stream.write(warnings.formatwarning(message, category, filename, lineno, line))

        with invoke_lock, contextlib.redirect_stdout(stream), warnings.catch_warnings():
            warnings.showwarning = to_log
            try:
                yield
            finally:
                stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


# -- Lambda runtime pieces ----------------------------------------------------------------------


@dataclass
class FakeLambdaContext:
    """Enough of the Lambda context object for Powertools (logger, idempotency, batch)."""

    function_name: str = "anonymizer-local"
    memory_limit_in_mb: int = 2048
    timeout_s: float = 900.0
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/anonymizer-local"
    log_stream_name: str = "local"
    _started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self._started)) * 1000))


def functions_dir() -> Path:
    """``functions/`` of the source checkout (or ``$ANONYMIZER_FUNCTIONS_DIR``)."""
    env = os.environ.get("ANONYMIZER_FUNCTIONS_DIR")
    if env:
        return Path(env)
    # local/anonymizer_local/emulator.py -> repository root
    return Path(__file__).resolve().parents[2] / "functions"


def load_function(name: str, directory: Path | None = None) -> ModuleType:
    """Import ``functions/<name>/app.py`` as a fresh module (``functions/`` is not a package).

    The module reads its environment at import time, like a Lambda cold start: set the
    environment first. Each call gives a new module, i.e. a new "container". The module is
    named ``app``, as in Lambda (handler ``app.lambda_handler``): Powertools idempotency keys
    include the function's module name, so they match across cold starts and deployments.
    """
    path = (directory or functions_dir()) / name / "app.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: local emulation needs a source checkout")
    spec = importlib.util.spec_from_file_location("app", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get("app")
    sys.modules["app"] = module  # only while it executes; two functions may be loaded at once
    try:
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            sys.modules.pop("app", None)
        else:
            sys.modules["app"] = previous
    return module


def sqs_event(messages: Iterable[Mapping[str, Any]], queue_arn: str) -> dict:
    """The Lambda SQS event for messages as returned by ReceiveMessage."""
    records = []
    for m in messages:
        attrs = m.get("Attributes") or {}
        records.append(
            {
                "messageId": m["MessageId"],
                "receiptHandle": m.get("ReceiptHandle", ""),
                "body": m["Body"],
                "attributes": {
                    "ApproximateReceiveCount": attrs.get("ApproximateReceiveCount", "1"),
                    "SentTimestamp": attrs.get("SentTimestamp", str(int(time.time() * 1000))),
                    "SenderId": attrs.get("SenderId", ACCOUNT_ID),
                    "ApproximateFirstReceiveTimestamp": attrs.get(
                        "ApproximateFirstReceiveTimestamp", str(int(time.time() * 1000))
                    ),
                },
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": queue_arn.split(":")[3] if queue_arn.count(":") >= 5 else REGION,
            }
        )
    return {"Records": records}


def succeeded_entries(messages: list[Mapping[str, Any]], response: Mapping[str, Any] | None) -> list[dict]:
    """DeleteMessageBatch entries for the messages a partial-batch response did not report failed,
    as Lambda's SQS poller deletes them."""
    failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
    return [
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
        for i, m in enumerate(messages)
        if m["MessageId"] not in failed
    ]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- moto-backed "account" ----------------------------------------------------------------------


@dataclass
class LocalAwsNames:
    input_bucket: str = "anonymizer-input"
    output_bucket: str = "anonymizer-output"
    table: str = "anonymizer-idempotency"
    queue: str = "anonymizer-input-events"
    dlq: str = "anonymizer-input-events-dlq"
    upload_prefix: str = "uploads/"


def aws_environment(endpoint_url: str, names: LocalAwsNames, region: str = REGION) -> dict[str, str]:
    """The environment both functions see locally (fake credentials, moto endpoint, names)."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_ENDPOINT_URL": endpoint_url,
        "OUTPUT_BUCKET": names.output_bucket,
        "UPLOAD_BUCKET": names.input_bucket,
        "UPLOAD_PREFIX": names.upload_prefix,
        "IDEMPOTENCY_TABLE": names.table,
        "POWERTOOLS_SERVICE_NAME": "anonymizer",
        "POWERTOOLS_METRICS_NAMESPACE": "Anonymizer",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }


def web_cors_rules(names: LocalAwsNames) -> dict[str, list[dict]]:
    """The buckets' CORS rules, as template.yaml sets them: the web page uploads a big image to
    its presigned POST/PUT URL and reads the result through its presigned GET URL."""
    upload = {"AllowedMethods": ["POST", "PUT"], "AllowedOrigins": ["*"], "AllowedHeaders": ["*"], "MaxAgeSeconds": 600}
    result = {"AllowedMethods": ["GET"], "AllowedOrigins": ["*"], "MaxAgeSeconds": 600}
    return {names.input_bucket: [upload], names.output_bucket: [result]}


def create_resources(names: LocalAwsNames, *, notifications: bool = True, visibility_timeout: int = 30) -> dict:
    """Buckets, idempotency table, queue + DLQ and the input bucket's notification to the queue,
    as the SAM template deploys them. Uses the current environment (AWS_ENDPOINT_URL)."""
    import boto3

    s3 = boto3.client("s3")
    sqs = boto3.client("sqs")
    ddb = boto3.client("dynamodb")
    for bucket in (names.input_bucket, names.output_bucket):
        s3.create_bucket(Bucket=bucket)
    for bucket, rules in web_cors_rules(names).items():  # the web page talks to S3 directly, as deployed
        s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": rules})
    ddb.create_table(
        TableName=names.table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.update_time_to_live(
        TableName=names.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
    )
    dlq_url = sqs.create_queue(QueueName=names.dlq)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=names.queue,
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}),
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    if notifications:
        s3.put_bucket_notification_configuration(
            Bucket=names.input_bucket,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]
            },
        )
    return {"queue_url": queue_url, "queue_arn": queue_arn, "dlq_url": dlq_url, "dlq_arn": dlq_arn}


class LocalAws:
    """moto's real HTTP server on 127.0.0.1 plus the deployed resources, as a context manager.

    Sets the AWS environment for this process while open and restores it on exit.
    """

    def __init__(
        self,
        names: LocalAwsNames | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        env_defaults: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ):
        self.names = names or LocalAwsNames()
        self.output = FunctionOutput(log_path)  # the functions' stdout and warnings
        self.host = host
        self.port = port
        self.env_defaults = dict(env_defaults or {})  # applied only where not already set
        self.server: Any = None
        self.resources: dict[str, str] = {}
        self._saved_env: dict[str, str | None] = {}

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalAws:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per S3 request

        self.port = self.port or free_port(self.host)
        self.server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self.server.start()
        # moto keeps its state per process, not per server: start from an empty account, so that
        # a second emulator in the same process (tests) does not find the first one's resources.
        reset = urllib.request.Request(self.endpoint_url + "/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, timeout=30).read()
        env = {k: v for k, v in self.env_defaults.items() if k not in os.environ}
        env.update(aws_environment(self.endpoint_url, self.names))
        self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self.resources = create_resources(self.names)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.output.close()

    def load(self, name: str) -> ModuleType:
        """A function's module, its import-time output (a cold start's) kept in the log."""
        with self.output.captured():
            return load_function(name)

    def invoke(self, handler: Callable[[dict, Any], dict], event: dict, function_name: str) -> dict:
        """One invocation at a time, as one Lambda container runs; its output kept in the log."""
        with invoke_lock, self.output.captured():
            return handler(event, FakeLambdaContext(function_name=function_name))

    def __enter__(self) -> LocalAws:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=REGION)

    def pump(self, handler: Callable[[dict, Any], dict], *, rounds: int | None = None) -> list[dict]:
        """Feed the queue's messages to the S3 function in batches until none is visible.

        Successful messages are deleted (what the Lambda poller does); failed ones stay and
        come back after the visibility timeout (after 3 receives, moto moves them to the DLQ).
        Returns one ``{"event", "response"}`` per invocation.
        """
        sqs = self.client("sqs")
        done = []
        while rounds is None or len(done) < rounds:
            messages = sqs.receive_message(
                QueueUrl=self.resources["queue_url"],
                MaxNumberOfMessages=10,
                AttributeNames=["All"],
                WaitTimeSeconds=0,
            ).get("Messages", [])
            if not messages:
                break
            event = sqs_event(messages, self.resources["queue_arn"])
            response = self.invoke(handler, event, "anonymizer-s3")
            entries = succeeded_entries(messages, response)
            if entries:
                sqs.delete_message_batch(QueueUrl=self.resources["queue_url"], Entries=entries)
            done.append({"event": event, "response": response})
        return done


# -- local-run ----------------------------------------------------------------------------------


def safe_local_path(root: Path, key: str) -> Path:
    """Where an S3 key is written under ``root``; never outside it.

    S3 keys are not paths: ``../x.jpg`` is a legal key. Empty, ``.`` and ``..`` segments are
    replaced, so the file always lands inside ``root``.
    """
    parts = []
    for part in key.replace("\\", "/").split("/"):
        if part in ("", ".", ".."):
            part = {"": "_", ".": "_.", "..": "_.."}[part]
        parts.append(part.replace("\x00", "_"))
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):  # belt and braces
        raise ValueError(f"key {key!r} escapes {root}")
    return path


def input_keys(inputs: Iterable[Path]) -> list[tuple[Path, str]]:
    """(file, S3 key) pairs, planned as the CLI plans its outputs: no two inputs share a key."""
    pairs = [(item.path, item.relative) for item in plan_inputs([str(p) for p in inputs])]
    for path, _ in pairs:
        if not path.is_file():
            raise FileNotFoundError(path)
    return pairs


def run_local_s3_flow(
    inputs: list[Path],
    out_dir: Path,
    options: dict | None = None,
    *,
    quiet: bool = False,
    log_path: Path | None = None,
) -> dict:
    """Process files through the deployed S3 path, locally, and download the results.

    Starts moto's HTTP server, creates the input/output buckets, the idempotency table and the
    queue + DLQ, subscribes the queue to the input bucket's ObjectCreated events, uploads each
    input (``options`` become ``x-amz-meta-anonymize-*`` metadata, exactly as a real uploader
    would set them), runs the real S3 function on the queued S3 notifications, and writes each
    anonymized image to ``out_dir/<key>`` with its sidecar report ``<key>.report.json``.

    Without inputs it processes an embedded sample: scikit-image's astronaut (a real face).

    Returns ``{"ok": n, "failed": m, "seconds": s, "objects": [{"input", "key", "status", ...}]}``
    and prints a one-line-per-object summary unless ``quiet``. The function's own log lines,
    metrics and warnings go to ``log_path`` (when given), not to the terminal.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = input_keys(inputs) if inputs else [(Path("<sample>"), "samples/astronaut.jpg")]
    with LocalAws(log_path=log_path) as aws:
        function = aws.load("s3_anonymize")
        s3 = aws.client("s3")
        metadata = option_metadata(options or {})
        for path, key in pairs:
            body = sample_image() if str(path) == "<sample>" else path.read_bytes()
            s3.put_object(Bucket=aws.names.input_bucket, Key=key, Body=body, Metadata=metadata)
        aws.pump(function.lambda_handler)
        objects = [_collect(s3, aws.names, path, key, out_dir) for path, key in pairs]
    summary = {
        "ok": sum(o["status"] == "ok" for o in objects),
        "failed": sum(o["status"] != "ok" for o in objects),
        "out_dir": str(out_dir),
        "seconds": round(time.perf_counter() - started, 1),
        "log": str(log_path) if log_path else None,
        "objects": objects,
    }
    if not quiet:
        print(format_summary(summary))
    return summary


def sample_image() -> bytes:
    """A JPEG with one real face: scikit-image's astronaut (public domain, NASA)."""
    try:
        import cv2
        from skimage import data
    except ImportError as exc:  # pragma: no cover - dev extra missing
        raise RuntimeError("the embedded sample needs scikit-image (pip install -e .[dev]); pass images") from exc
    bgr = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _collect(s3: Any, names: LocalAwsNames, path: Path, key: str, out_dir: Path) -> dict:
    from anonymizer.aws.s3_flow import report_key

    entry: dict[str, Any] = {"input": str(path), "key": key}
    try:
        obj = s3.get_object(Bucket=names.output_bucket, Key=key)
    except s3.exceptions.NoSuchKey:  # failed: the failure report has the message, the tags a code
        tags = {
            t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=names.input_bucket, Key=key).get("TagSet", [])
        }
        failure: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            failure = json.loads(s3.get_object(Bucket=names.output_bucket, Key=report_key(key))["Body"].read())
        entry.update(
            status="failed",
            error=failure.get("error") or tags.get("anonymizer-error", "failed"),
            message=failure.get("message") or "see the function's log",
        )
        return entry
    target = safe_local_path(out_dir, key)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(obj["Body"].read())
    report = json.loads(s3.get_object(Bucket=names.output_bucket, Key=report_key(key))["Body"].read())
    report_path = target.with_name(target.name + ".report.json")
    report_path.write_text(json.dumps(report, indent=2, default=str))
    counts = report.get("counts", {})
    entry.update(
        status="ok",
        output=str(target),
        report=str(report_path),
        content_type=obj.get("ContentType"),
        faces=counts.get("face", 0),
        plates=counts.get("plate", 0),
    )
    return entry


def format_summary(summary: Mapping[str, Any]) -> str:
    """A line per object, then totals per class, the time taken and the images where nothing was found."""
    lines = []
    for o in summary["objects"]:
        if o["status"] == "ok":
            lines.append(f"ok      {o['key']}: {o['faces']} face(s), {o['plates']} plate(s) -> {o['output']}")
        else:
            lines.append(f"FAILED  {o['key']}: {o['error']}: {o['message']}")
    done = [o for o in summary["objects"] if o["status"] == "ok"]
    faces, plates = sum(o["faces"] for o in done), sum(o["plates"] for o in done)
    lines.append(
        f"{summary['ok']} anonymized, {summary['failed']} failed in {summary.get('seconds', 0):.1f} s; "
        f"found {faces} face(s), {plates} plate(s); results in {summary['out_dir']}"
    )
    empty = [o["key"] for o in done if not o["faces"] and not o["plates"]]
    if empty:
        lines.append(
            f"nothing found in {len(empty)} image(s): {', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}"
        )
    if summary.get("log"):
        lines.append(f"the function's log: {summary['log']}")
    return "\n".join(lines)


# -- API Gateway proxy events --------------------------------------------------------------------


def api_event(
    method: str,
    path: str,
    *,
    query: Mapping[str, list[str]] | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    source_ip: str = "127.0.0.1",
    stage: str = "local",
) -> dict:
    """An API Gateway REST (v1) Lambda proxy event; the body is always base64 (binary media
    types ``*/*``, as deployed)."""
    headers = dict(headers or {})
    query = {k: list(v) for k, v in (query or {}).items()}
    host = next((v for k, v in headers.items() if k.lower() == "host"), "localhost")
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method.upper(),
        "headers": headers or None,
        "multiValueHeaders": {k: [v] for k, v in headers.items()} or None,
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": "local",
            "domainName": host,
            "httpMethod": method.upper(),
            "identity": {"sourceIp": source_ip, "userAgent": headers.get("User-Agent", "")},
            "path": f"/{stage}{path}",
            "protocol": "HTTP/1.1",
            "requestId": str(uuid.uuid4()),
            "requestTimeEpoch": int(time.time() * 1000),
            "resourcePath": "/{proxy+}",
            "stage": stage,
        },
        "body": base64.b64encode(body).decode() if body else None,
        "isBase64Encoded": bool(body),
    }


def proxy_response_parts(response: Mapping[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body bytes) from a Lambda proxy response."""
    headers: list[tuple[str, str]] = []
    for key, value in (response.get("headers") or {}).items():
        headers.append((key, str(value)))
    for key, values in (response.get("multiValueHeaders") or {}).items():
        if key not in (response.get("headers") or {}):
            headers.extend((key, str(v)) for v in values)
    body = response.get("body") or ""
    data = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode("utf-8")
    return int(response.get("statusCode", 502)), headers, data
