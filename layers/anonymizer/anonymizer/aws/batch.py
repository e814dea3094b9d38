"""S3 Batch Operations tasks: the backfill function's side of a ``LambdaInvoke`` job.

A backfill job (``anonymize backfill``, or the AWS CLI) lists objects already in a bucket in a
manifest; S3 Batch Operations invokes ``functions/s3_backfill`` once per object with an
invocation schema 2.0 event::

    {"invocationSchemaVersion": "2.0", "invocationId": "...",
     "job": {"id": "...", "userArguments": {...}},
     "tasks": [{"taskId": "...", "s3Bucket": "b", "s3Key": "photos/a+b.jpg", "s3VersionId": null}]}

and reads one result per task back: ``Succeeded``, ``TemporaryFailure`` (Batch Operations
retries: throttling, timeouts, S3/DynamoDB/EventBridge 5xx, another invocation holding the same
object) or ``PermanentFailure`` (the object is missing, corrupt, unsupported, too large, or has
bad options), each with a short ``resultString`` that lands in the job's completion report.

Each object goes through the very same :func:`anonymizer.aws.s3_flow.process_object` as the
live flow (fail closed, report then image, completion event). Before that, an object whose
anonymized copy is already in the output bucket for the same content (its report names the
same source eTag and the image exists) is skipped, so rerunning a job costs two HEAD/GET requests
per object and runs no model; idempotency covers concurrent and repeated invocations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus

from ..errors import AnonymizerError
from .s3_flow import FlowConfig, ObjectRef, report_key

ResultCode = Literal["Succeeded", "TemporaryFailure", "PermanentFailure"]
SUCCEEDED: ResultCode = "Succeeded"
TEMPORARY: ResultCode = "TemporaryFailure"
PERMANENT: ResultCode = "PermanentFailure"
SCHEMA_VERSIONS = ("1.0", "2.0")
EVENT_NAME = "Backfill:LambdaInvoke"  # ObjectRef.event_name of a backfilled object
MAX_RESULT_STRING = 1000

# Error codes that mean "try again later" (S3, DynamoDB, EventBridge, STS...).
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "RequestThrottled",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "503",
        "500",
    }
)
TRANSIENT_ERRORS = frozenset(
    {"IdempotencyAlreadyInProgressError", "IdempotencyPersistenceLayerError", "EventPublishError"}
)


class BatchEventError(ValueError):
    """The event is not an S3 Batch Operations invocation this function understands."""


@dataclass(frozen=True)
class BatchTask:
    task_id: str
    bucket: str
    key: str  # decoded
    version_id: str | None = None


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    result_code: ResultCode
    result_string: str

    def as_dict(self) -> dict[str, str]:
        return {"taskId": self.task_id, "resultCode": self.result_code, "resultString": self.result_string}


@dataclass(frozen=True)
class Invocation:
    schema_version: str
    invocation_id: str
    job_id: str
    user_arguments: dict[str, str]
    tasks: list[BatchTask]


def parse_invocation(event: Mapping[str, Any]) -> Invocation:
    """The job and its tasks from a Batch Operations event (schema 2.0; 1.0 is read too).

    Keys arrive URL-encoded as in the manifest (``+`` for a space) and are decoded here, as
    Powertools' ``S3BatchOperationTask.s3_key`` does.
    """
    if not isinstance(event, Mapping) or event.get("invocationSchemaVersion") not in SCHEMA_VERSIONS:
        raise BatchEventError("not an S3 Batch Operations invocation (invocationSchemaVersion 2.0 expected)")
    try:
        tasks = []
        for task in event["tasks"]:
            bucket = task.get("s3Bucket") or str(task.get("s3BucketArn", "")).split(":::")[-1]
            if not bucket or not task.get("s3Key"):
                raise BatchEventError(f"task {task.get('taskId')!r} names no bucket or key")
            tasks.append(
                BatchTask(
                    task_id=str(task["taskId"]),
                    bucket=str(bucket),
                    key=unquote_plus(str(task["s3Key"])),
                    version_id=task.get("s3VersionId") or None,
                )
            )
        job = event.get("job") or {}
        return Invocation(
            schema_version=str(event["invocationSchemaVersion"]),
            invocation_id=str(event["invocationId"]),
            job_id=str(job.get("id", "")),
            user_arguments=dict(job.get("userArguments") or {}),
            tasks=tasks,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise BatchEventError(f"malformed S3 Batch Operations invocation: {exc!r}") from None


def response(invocation: Invocation, results: list[TaskResult]) -> dict[str, Any]:
    """What the function returns to Batch Operations (one result per task)."""
    return {
        "invocationSchemaVersion": invocation.schema_version,
        "treatMissingKeysAs": PERMANENT,
        "invocationId": invocation.invocation_id,
        "results": [r.as_dict() for r in results],
    }


def handle_invocation(
    event: Mapping[str, Any],
    *,
    process: Callable[[ObjectRef], Mapping[str, Any]],
    storage: Any,
    config: FlowConfig,
) -> dict[str, Any]:
    """Run every task of one invocation and build the response (``process`` is the idempotent
    :func:`~anonymizer.aws.s3_flow.process_object` of the function)."""
    invocation = parse_invocation(event)
    results = [process_task(t, process=process, storage=storage, config=config) for t in invocation.tasks]
    return response(invocation, results)


def process_task(
    task: BatchTask,
    *,
    process: Callable[[ObjectRef], Mapping[str, Any]],
    storage: Any,
    config: FlowConfig,
) -> TaskResult:
    """One manifest row -> one result code. Never raises: every outcome is a result."""
    where = f"s3://{task.bucket}/{task.key}"
    try:
        head = head_object(storage, task.bucket, task.key, task.version_id)
        if head is None:
            return _result(task, PERMANENT, f"NoSuchKey: {where} does not exist")
        ref = ObjectRef(
            bucket=task.bucket,
            key=task.key,
            version_id=task.version_id or head.get("VersionId") or None,
            etag=str(head.get("ETag", "")).strip('"') or None,
            size=int(head.get("ContentLength", 0)),
            event_name=EVENT_NAME,
        )
        if already_anonymized(storage, config.output_bucket, ref, head.get("LastModified")):
            return _result(task, SUCCEEDED, f"skipped: already anonymized in s3://{config.output_bucket}/{task.key}")
        summary = process(ref)
    except AnonymizerError as exc:
        code = TEMPORARY if exc.http_status >= 500 else PERMANENT
        return _result(task, code, f"{exc.code}: {exc}")
    except Exception as exc:  # noqa: BLE001 - every outcome must become a task result
        code = TEMPORARY if is_transient(exc) else PERMANENT
        return _result(task, code, f"{error_code(exc)}: {exc}")
    if summary.get("status") == "ok":
        text = (
            f"anonymized: {summary.get('faces', 0)} face(s), {summary.get('plates', 0)} plate(s) "
            f"-> s3://{summary.get('output_bucket')}/{summary.get('output_key')}"
        )
        return _result(task, SUCCEEDED, text)
    if summary.get("status") == "failed":  # permanent: recorded (failure report, tags, event) once
        return _result(task, PERMANENT, f"{summary.get('error', 'error')}: {summary.get('message', '')}")
    reason = str(summary.get("reason", "skipped"))
    if "no longer exists" in reason:  # deleted between the HEAD and the read
        return _result(task, PERMANENT, f"NoSuchKey: {where} does not exist")
    return _result(task, SUCCEEDED, f"skipped: {reason}")


def head_object(storage: Any, bucket: str, key: str, version_id: str | None) -> dict | None:
    """HEAD of the input object (None when it does not exist); its LastModified dates the content."""
    kwargs = {"Bucket": bucket, "Key": key, **({"VersionId": version_id} if version_id else {})}
    try:
        return storage.client.head_object(**kwargs)
    except storage.client.exceptions.ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchVersion"):
            return None
        raise


def already_anonymized(storage: Any, output_bucket: str, ref: ObjectRef, last_modified: Any = None) -> bool:
    """True when the output bucket holds this object's anonymized copy for its current content: a
    ``status: ok`` report for the same source bucket whose version is the object's (versioned
    buckets) or, without versions, that was written after the object was last modified and
    for the same size; and the image itself.

    The report alone is not enough: it is written before the image (a process killed between
    the two leaves a report without an image), so the image is checked too.
    """
    try:
        report = storage.read_json(output_bucket, report_key(ref.key))
    except Exception:  # noqa: BLE001 - unreadable report: process the object again
        return False
    if not isinstance(report, Mapping) or report.get("status") != "ok":
        return False
    source = report.get("source") or {}
    if source.get("bucket") != ref.bucket:
        return False
    if ref.version_id and source.get("version_id"):
        same = source["version_id"] == ref.version_id
    else:
        same = source.get("size") == ref.size and _not_older(report.get("processed_at"), last_modified)
    return bool(same) and storage.head(output_bucket, ref.key) is not None


def _not_older(processed_at: Any, last_modified: Any) -> bool:
    """Was the report written at or after the object's last modification?"""
    from datetime import datetime

    if not processed_at or last_modified is None:
        return False
    try:
        done = datetime.fromisoformat(str(processed_at))
    except ValueError:
        return False
    if isinstance(last_modified, str):
        last_modified = datetime.fromisoformat(last_modified)
    return done >= last_modified.replace(microsecond=0)


def is_transient(exc: BaseException) -> bool:
    """Would the same call probably succeed later? (throttling, timeouts, 5xx, a busy record)"""
    if type(exc).__name__ in TRANSIENT_ERRORS:
        return True
    if isinstance(exc, AnonymizerError):
        return exc.http_status >= 500
    try:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
    except ImportError:  # pragma: no cover - boto3 is in the Lambda runtime and the aws extra
        return False
    if isinstance(exc, ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return error_code(exc) in TRANSIENT_CODES or status >= 500 or status == 429
    return False


def error_code(exc: BaseException) -> str:
    """A ClientError's AWS code (``SlowDown``), else the exception's class name."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(exc).__name__


def _result(task: BatchTask, code: ResultCode, text: str) -> TaskResult:
    return TaskResult(task_id=task.task_id, result_code=code, result_string=text[:MAX_RESULT_STRING])
