"""A bounded load run of the S3 path, with transient S3 faults, against moto's real HTTP server.

    python tools/load_run.py --objects 1000 --workers 4

What it does, all on 127.0.0.1 and all bounded (deadlines, iteration caps):

1. starts moto's ``ThreadedMotoServer`` on a free loopback port and creates the resources as
   ``anonymizer_local.emulator`` does (input/output buckets, idempotency table, queue + DLQ with
   ``maxReceiveCount=3``, the input bucket's ObjectCreated notification to the queue);
2. uploads N small objects (about 95 % valid JPEG/PNG images with and without faces, 5 % corrupt
   ones, every one with distinct bytes); moto sends one S3 notification per object to the queue;
3. runs W worker threads, each one its own "Lambda container" (the real
   ``functions/s3_anonymize/app.py`` loaded once per worker): long-poll up to 5 messages, invoke
   ``lambda_handler`` with the SQS event, delete the messages not in ``batchItemFailures``; failed
   ones reappear after the visibility timeout and moto moves them to the DLQ after 3 receives;
4. injects transient S3 faults with a fixed seed: a fraction of the objects (``--fault-rate``)
   get exactly one fault on one of GetObject / PutObject(report) / PutObject(image), either at
   the call (a ClientError 500 InternalError / 503 SlowDown or a ReadTimeoutError that reaches
   the function: the record fails and SQS redelivers it) or on the wire (a 503 SlowDown or a
   read timeout that botocore's own retries absorb);
5. stops when the queue is empty and no invocation is in flight (or at ``--time-limit``), then
   checks every object: in the output bucket (image + report + tags, the report matching the
   image), refused for good (a corrupt image: a ``status: failed`` report and no image, no retry)
   or in the DLQ, never both, never lost, never two different bodies for one key, never the
   original bytes.

Prints: in, out, failed (DLQ), lost, duplicated, objects/s, wall time. Exit status 0 only when
lost == duplicated == 0, no partial publication, every corrupt object (and only those) refused
with a failure report, and nothing valid in the DLQ. ``run_load()`` is the same as a function
(tests/integration/test_faults.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "layers" / "anonymizer") not in sys.path:  # a source checkout without `pip install -e`
    sys.path.insert(0, str(ROOT / "layers" / "anonymizer"))

REPORT_SUFFIX = ".report.json"
VOLATILE_REPORT_FIELDS = ("processed_at", "latency_ms")  # differ per attempt by design


# -- the corpus ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    key: str
    data: bytes
    kind: str  # "face" | "noface" | "corrupt"

    @property
    def valid(self) -> bool:
        return self.kind != "corrupt"


def _base_images(size: int) -> dict[str, list]:
    import cv2
    import numpy as np
    from skimage import data

    def fit(img, side):
        h, w = img.shape[:2]
        s = side / max(h, w)
        return cv2.resize(img, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)

    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    faces = [astronaut, astronaut[:, ::-1].copy(), astronaut[0:300, 100:400].copy()]
    rng = np.random.default_rng(0)
    gradient = np.dstack([*np.meshgrid(np.linspace(0, 255, 320), np.linspace(0, 255, 240)), np.full((240, 320), 90.0)])
    nofaces = [
        cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR),
        cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR),
        cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR),
        gradient.astype(np.uint8),
        rng.integers(0, 256, (200, 300, 3), dtype=np.uint8),
    ]
    sides = sorted({max(48, size // 4), max(64, size // 2), max(96, (3 * size) // 4), size})
    return {
        "face": [fit(img, side) for img in faces for side in sides if side >= 96],  # faces need some pixels
        "noface": [fit(img, side) for img in nofaces for side in sides],
    }


def make_corpus(n: int, *, seed: int = 7, image_size: int = 256, corrupt_every: int = 20) -> list[Item]:
    """``n`` objects with distinct bytes: every ``corrupt_every``-th is corrupt, ~40 % of the valid
    ones have a real face (the astronaut), the rest none; JPEG or PNG."""
    import cv2

    rng = random.Random(seed)
    bases = _base_images(image_size)
    sample_jpeg = cv2.imencode(".jpg", bases["face"][0])[1].tobytes()
    items = []
    for i in range(n):
        if i % corrupt_every == corrupt_every // 2:
            kind = rng.choice(["truncated", "random", "text", "fake-png", "empty-ish"])
            body = {
                "truncated": sample_jpeg[: len(sample_jpeg) * 2 // 5],
                "random": rng.randbytes(300 + i % 200),
                "text": f"object {i}: this is not an image".encode(),
                "fake-png": b"\x89PNG\r\n\x1a\n" + rng.randbytes(64),
                "empty-ish": b"\xff\xd8\xff",
            }[kind]
            items.append(Item(f"load/{i:05d}-corrupt-{kind}.jpg", body, "corrupt"))
            continue
        kind = "face" if rng.random() < 0.4 else "noface"
        img = rng.choice(bases[kind]).copy()
        # distinct bytes for every object: a 3x3 mark in the corner, away from any face
        img[:3, :3] = ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)
        ext = rng.choice([".jpg", ".jpg", ".png"])
        params = [cv2.IMWRITE_JPEG_QUALITY, rng.choice([80, 90])] if ext == ".jpg" else []
        body = cv2.imencode(ext, img, params)[1].tobytes()
        items.append(Item(f"load/{i:05d}-{kind}{ext}", body, kind))
    return items


# -- fault injection and recording (botocore event hooks on the function's own S3 client) -------


def client_error(code: str, status: int, operation: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": f"injected {code}"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


class _Raw:
    """What botocore's AWSResponse reads a body from."""

    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def s3_error_response(url: str, code: str, status: int) -> Any:
    """A wire-level S3 error response, as returned by a ``before-send`` hook (botocore then
    parses it and applies its own retry policy)."""
    from botocore.awsrequest import AWSResponse

    body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected</Message></Error>'
    return AWSResponse(url, status, {"Content-Type": "application/xml"}, _Raw(body.encode()))


def _body_bytes(body: Any) -> bytes:
    """A PutObject body as bytes (botocore may have wrapped bytes in a file-like object)."""
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    position = body.tell()
    data = body.read()
    body.seek(position)
    return data


def site_of(operation: str, key: str) -> str:
    """``GetObject`` | ``PutObject:report`` | ``PutObject:image`` | other operation names."""
    if operation == "PutObject":
        return "PutObject:report" if key.endswith(REPORT_SUFFIX) else "PutObject:image"
    return operation


def source_key(key: str) -> str:
    return key[: -len(REPORT_SUFFIX)] if key.endswith(REPORT_SUFFIX) else key


def _key_from_url(url: str) -> str:
    # path-style on a loopback endpoint: http://127.0.0.1:port/<bucket>/<key>?query
    path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
    return unquote(path.split("/", 1)[1]) if "/" in path else ""


FAULT_SITES = ("GetObject", "PutObject:report", "PutObject:image")
FAULT_KINDS = ("call:InternalError", "call:SlowDown", "call:ReadTimeout", "send:SlowDown", "send:ReadTimeout")


@dataclass
class FaultPlan:
    """Which object gets which single transient fault: decided per key from ``seed`` alone, so a
    run is reproducible whatever the thread interleaving."""

    rate: float = 0.02
    seed: int = 7
    planned: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (site, kind)
    fired: Counter = field(default_factory=Counter)  # "site kind" -> n
    _left: set = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def plan(self, keys: list[str]) -> None:
        for key in keys:
            r = random.Random(f"{self.seed}:{key}")
            if r.random() < self.rate:
                self.planned[key] = (r.choice(FAULT_SITES), r.choice(FAULT_KINDS))
        self._left = set(self.planned)

    def take(self, key: str, site: str, layer: str) -> str | None:
        """The fault kind to inject now (once per planned key), or None."""
        want = self.planned.get(key)
        if not want or want[0] != site or not want[1].startswith(layer + ":"):
            return None
        with self._lock:
            if key not in self._left:
                return None
            self._left.discard(key)
            self.fired[f"{site} {want[1]}"] += 1
        return want[1]


class S3Tap:
    """Records every PutObject the function attempts (per key, in order) and injects the planned
    faults. Installed on each worker's own S3 client with ``install(client)``; thread-safe."""

    def __init__(self, plan: FaultPlan | None = None):
        self.plan = plan
        self.lock = threading.Lock()
        self.puts: dict[str, list[bytes]] = defaultdict(list)  # key -> bodies attempted, in order
        self.calls: list[tuple[str, str]] = []  # (operation, key) in order

    def install(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.s3", self._before_call)
        client.meta.events.register("before-send.s3", self._before_send)

    def _before_call(self, params: dict, model: Any, **_: Any) -> None:
        key = str(params.get("Key", ""))
        with self.lock:
            self.calls.append((model.name, key))
            if model.name == "PutObject":
                self.puts[key].append(_body_bytes(params.get("Body", b"")))
        if self.plan is None:
            return
        kind = self.plan.take(source_key(key), site_of(model.name, key), "call")
        if kind == "call:InternalError":
            raise client_error("InternalError", 500, model.name)
        if kind == "call:SlowDown":
            raise client_error("SlowDown", 503, model.name)
        if kind == "call:ReadTimeout":
            from botocore.exceptions import ReadTimeoutError

            raise ReadTimeoutError(endpoint_url=f"s3://{params.get('Bucket')}/{key}", error="injected")

    def _before_send(self, request: Any, event_name: str, **_: Any) -> Any:
        if self.plan is None:
            return None
        operation = event_name.rsplit(".", 1)[-1]
        key = _key_from_url(request.url)
        kind = self.plan.take(source_key(key), site_of(operation, key), "send")
        if kind == "send:SlowDown":
            return s3_error_response(request.url, "SlowDown", 503)
        if kind == "send:ReadTimeout":
            from botocore.exceptions import ReadTimeoutError

            raise ReadTimeoutError(endpoint_url=request.url, error="injected")
        return None

    def image_digests(self) -> dict[str, set[str]]:
        with self.lock:
            images = [(k, v) for k, v in self.puts.items() if not k.endswith(REPORT_SUFFIX)]
            return {k: {hashlib.md5(b).hexdigest() for b in v} for k, v in images}

    def report_writes(self) -> tuple[int, int]:
        """(reports written more than once, reports whose content differed between writes, the
        per-attempt fields — time, latency, timings — left out; the latter must be 0)."""
        with self.lock:
            items = [list(v) for k, v in self.puts.items() if k.endswith(REPORT_SUFFIX)]
        rewritten = sum(len(bodies) > 1 for bodies in items)
        differing = sum(len({normalized_report(b) for b in bodies}) > 1 for bodies in items)
        return rewritten, differing


def normalized_report(body: bytes) -> str:
    report = json.loads(body)
    for name in VOLATILE_REPORT_FIELDS:
        report.pop(name, None)
    report.get("report", {}).pop("timings_ms", None)
    return json.dumps(report, sort_keys=True)


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    invocations: int = 0
    crashed: int = 0  # the handler raised (none expected: the batch is redelivered whole)
    records: int = 0
    record_failures: int = 0
    overruns: int = 0  # invocations longer than the function timeout (Lambda would kill them)
    max_batch_s: float = 0.0
    inflight: int = 0
    poller_errors: int = 0  # ReceiveMessage / DeleteMessageBatch failures of the harness itself


def _receive_all(sqs: Any, url: str, *, max_rounds: int = 10_000) -> list[dict]:
    """Every message in a queue (kept invisible while we count them)."""
    out: list[dict] = []
    empty = 0
    for _ in range(max_rounds):
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600).get("Messages", [])
        if not got:
            empty += 1
            if empty >= 2:
                break
            continue
        empty = 0
        out += got
    return out


def _keys_of(message: dict) -> list[str]:
    from urllib.parse import unquote_plus

    body = json.loads(message["Body"])
    return [unquote_plus(r["s3"]["object"]["key"]) for r in body.get("Records", [])]


def run_load(
    objects: int = 1000,
    workers: int = 4,
    *,
    seed: int = 7,
    fault_rate: float = 0.02,
    corrupt_every: int = 20,
    image_size: int = 256,
    visibility_timeout: int = 10,
    function_timeout: float | None = None,
    batch_size: int = 5,
    time_limit: float = 900.0,
    verify: bool = True,
    verbose: bool = False,
    log: Any = print,
) -> dict:
    """Run it; returns the figures (see the module docstring). Never runs past ``time_limit``."""
    from anonymizer_local.emulator import (
        FakeLambdaContext,
        LocalAws,
        LocalAwsNames,
        load_function,
        sqs_event,
        succeeded_entries,
    )

    started_all = time.monotonic()
    deadline = started_all + time_limit
    function_timeout = function_timeout or float(visibility_timeout)  # Lambda: timeout <= visibility
    forced_env = {
        "ANONYMIZER_TARGETS": "face",
        "POWERTOOLS_METRICS_DISABLED": "true",  # EMF to stdout per invocation is noise here
        "POWERTOOLS_LOG_LEVEL": "INFO" if verbose else "CRITICAL",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in forced_env}
    os.environ.update(forced_env)
    names = LocalAwsNames(
        input_bucket="load-input",
        output_bucket="load-output",
        table="load-idempotency",
        queue="load-events",
        dlq="load-events-dlq",
    )
    items = make_corpus(objects, seed=seed, image_size=image_size, corrupt_every=corrupt_every)
    by_key = {it.key: it for it in items}
    plan = FaultPlan(rate=fault_rate, seed=seed)
    plan.plan([it.key for it in items if it.valid])
    tap = S3Tap(plan)
    stats = Stats()
    try:
        with LocalAws(names) as aws:  # 127.0.0.1, free port
            sqs = aws.client("sqs")
            s3 = aws.client("s3")
            queue_url, queue_arn, dlq_url = (aws.resources[k] for k in ("queue_url", "queue_arn", "dlq_url"))
            sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"VisibilityTimeout": str(visibility_timeout)})

            t0 = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda it: s3.put_object(Bucket=names.input_bucket, Key=it.key, Body=it.data), items))
            upload_s = time.monotonic() - t0
            input_etags = {
                it.key: hashlib.md5(it.data).hexdigest() for it in items
            }  # single-PUT ETag = MD5 of the body

            # one "container" per worker: module state (BatchProcessor, clients) is per container
            functions = [load_function("s3_anonymize") for _ in range(workers)]
            for fn in functions:
                tap.install(fn.storage.client)
            from anonymizer.aws import get_anonymizer

            get_anonymizer()  # load the models once before the clock starts (a warm container)

            stop = threading.Event()
            # moto's SQS backend has no lock: two concurrent ReceiveMessage calls can hand out the
            # same message (counting two receives) and both try to move it to the DLQ (a 500 for
            # one of them). Real SQS has no such race, so receives are serialised here (the
            # handler invocations, the work, still run concurrently).
            receive_lock = threading.Lock()

            def worker(n: int) -> None:
                fn = functions[n]
                client = aws.client("sqs")
                for _ in range(1_000_000):  # bounded; the deadline ends it much sooner
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    try:
                        with receive_lock:
                            messages = client.receive_message(
                                QueueUrl=queue_url,
                                MaxNumberOfMessages=batch_size,
                                WaitTimeSeconds=1,
                                AttributeNames=["All"],
                            ).get("Messages", [])
                    except Exception as exc:  # noqa: BLE001 - the poller retries, as Lambda's does
                        with stats.lock:
                            stats.poller_errors += 1
                        log(f"worker {n}: receive failed: {exc!r}")
                        time.sleep(0.5)
                        continue
                    if not messages:
                        time.sleep(0.05)  # let another worker take the lock
                        continue
                    # in flight from here until its messages are deleted or left to reappear (until
                    # then they count as not visible in the queue, so the stop check sees no gap)
                    with stats.lock:
                        stats.inflight += 1
                    try:
                        context = FakeLambdaContext(function_name=f"load-worker-{n}", timeout_s=function_timeout)
                        t = time.monotonic()
                        try:
                            response = fn.lambda_handler(sqs_event(messages, queue_arn), context)
                        except Exception as exc:  # noqa: BLE001 - the invocation failed: all redelivered
                            with stats.lock:
                                stats.crashed += 1
                            if verbose:
                                log(f"worker {n}: invocation failed: {exc!r}")
                            continue
                        elapsed = time.monotonic() - t
                        entries = succeeded_entries(messages, response)
                        if entries:
                            try:
                                client.delete_message_batch(QueueUrl=queue_url, Entries=entries)
                            except Exception as exc:  # noqa: BLE001 - they come back: idempotent hits
                                with stats.lock:
                                    stats.poller_errors += 1
                                log(f"worker {n}: delete failed: {exc!r}")
                        with stats.lock:
                            stats.invocations += 1
                            stats.records += len(messages)
                            stats.record_failures += len(messages) - len(entries)
                            stats.max_batch_s = max(stats.max_batch_s, elapsed)
                            stats.overruns += elapsed > function_timeout
                    finally:
                        with stats.lock:
                            stats.inflight -= 1

            t0 = time.monotonic()
            threads = [threading.Thread(target=worker, args=(n,), name=f"load-worker-{n}") for n in range(workers)]
            for t in threads:
                t.start()
            quiet_checks = 0
            timed_out = True
            last_report = t0
            while time.monotonic() < deadline:
                time.sleep(0.5)
                attrs = sqs.get_queue_attributes(
                    QueueUrl=queue_url,
                    AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
                )["Attributes"]
                queued = int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])
                with stats.lock:
                    busy = stats.inflight
                if time.monotonic() - last_report > 30:
                    last_report = time.monotonic()
                    log(f"  ... {time.monotonic() - t0:.0f} s: {queued} queued, {stats.invocations} invocations")
                if queued == 0 and busy == 0:
                    quiet_checks += 1
                    if quiet_checks >= 3:
                        timed_out = False
                        break
                else:
                    quiet_checks = 0
            stop.set()
            for t in threads:
                t.join(timeout=max(5.0, function_timeout * 3))
            wall_s = time.monotonic() - t0

            # -- where did every object end? ---------------------------------------------------
            out_listing = {}
            paginator = s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=names.output_bucket):
                for o in page.get("Contents", []):
                    out_listing[o["Key"]] = o["ETag"].strip('"')
            dlq_messages = _receive_all(sqs, dlq_url)
            dlq_keys = Counter(k for m in dlq_messages for k in _keys_of(m))
            images = {k for k in out_listing if not k.endswith(REPORT_SUFFIX)}
            reports = {source_key(k) for k in out_listing if k.endswith(REPORT_SUFFIX)}
            keys = set(by_key)
            out = keys & images & reports
            failed = keys & set(dlq_keys)
            rejected = {k for k in (reports - images) & keys if _failure_report(s3, names, k)}
            partial = sorted((images ^ reports) & keys - rejected)
            foreign = sorted((images | reports) - keys)
            both = sorted(out & failed)
            lost = sorted(keys - out - failed - rejected)

            digests = tap.image_digests()
            duplicated = sorted(k for k, d in digests.items() if len(d) > 1)
            originals_published = sorted(k for k, d in digests.items() if k in by_key and input_etags[k] in d)
            report_rewrites, report_differing = tap.report_writes()
            not_recorded = sorted(k for k in images if out_listing[k] not in digests.get(k, set()))

            problems: list[str] = []
            if verify:
                problems = _verify_outputs(s3, names, sorted(out), input_etags)
            valid = {it.key for it in items if it.valid}
            corrupt = keys - valid
            expectation = {
                "valid_not_out": sorted(valid - out),
                "corrupt_not_refused": sorted(corrupt - rejected),
                "corrupt_in_dlq": sorted(corrupt & failed),  # refused once, never retried into the DLQ
                "valid_in_dlq": sorted(valid & failed),
            }
            left_in_queue = len(_receive_all(sqs, queue_url, max_rounds=50))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    n_in = len(keys)
    result = {
        "objects_in": n_in,
        "valid": len(valid),
        "corrupt": len(corrupt),
        "out": len(out),
        "failed": len(failed),
        "rejected": len(rejected),
        "lost": len(lost),  # = in - out - failed (+ in both, which must be 0 too)
        "lost_keys": lost,
        "duplicated": len(duplicated),
        "duplicated_keys": duplicated,
        "in_both": len(both),
        "partial": partial,
        "foreign_outputs": foreign,
        "originals_published": originals_published,
        "outputs_not_recorded": not_recorded,
        "dlq_messages": len(dlq_messages),
        "dlq_duplicates": sum(n > 1 for n in dlq_keys.values()),
        "left_in_queue": left_in_queue,
        "report_rewrites": report_rewrites,
        "report_differing": report_differing,
        "verify_problems": problems,
        "expectation": expectation,
        "faults_planned": len(plan.planned),
        "faults_fired": dict(plan.fired),
        "workers": workers,
        "batch_size": batch_size,
        "visibility_timeout_s": visibility_timeout,
        "function_timeout_s": function_timeout,
        "invocations": stats.invocations,
        "crashed_invocations": stats.crashed,
        "poller_errors": stats.poller_errors,
        "records": stats.records,
        "record_failures": stats.record_failures,
        "overruns": stats.overruns,
        "max_batch_s": round(stats.max_batch_s, 2),
        "upload_s": round(upload_s, 1),
        "wall_s": round(wall_s, 1),
        "objects_per_s": round(n_in / wall_s, 2) if wall_s > 0 else 0.0,
        "total_s": round(time.monotonic() - started_all, 1),
        "timed_out": timed_out,
        "image_size": image_size,
        "seed": seed,
        "fault_rate": fault_rate,
    }
    result["ok"] = (
        result["lost"] == 0
        and not duplicated
        and not both
        and not partial
        and not foreign
        and not originals_published
        and not not_recorded
        and not problems
        and not report_differing
        and not any(expectation.values())
        and left_in_queue == 0
        and not timed_out
    )
    return result


def _failure_report(s3: Any, names: Any, key: str) -> bool:
    """Whether ``key``'s report in the output bucket records a permanent failure (with its message)."""
    body = s3.get_object(Bucket=names.output_bucket, Key=key + REPORT_SUFFIX)["Body"].read()
    report = json.loads(body)
    return report.get("status") == "failed" and bool(report.get("error")) and bool(report.get("message"))


def _verify_outputs(s3: Any, names: Any, keys: list[str], input_etags: dict[str, str]) -> list[str]:
    """Each published image: content type, metadata naming its source, tags, and a report that
    describes exactly this image. Returns the problems found (empty: all good)."""

    def check(key: str) -> str | None:
        head = s3.head_object(Bucket=names.output_bucket, Key=key)
        if not str(head.get("ContentType", "")).startswith("image/"):
            return f"{key}: content type {head.get('ContentType')}"
        if input_etags[key] in json.dumps(head["Metadata"]):
            return f"{key}: the original's ETag (its MD5) is in the output's metadata"
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=names.output_bucket, Key=key)["TagSet"]}
        if tags.get("anonymizer-status") != "ok" or not tags.get("anonymizer-model", "").startswith("face="):
            return f"{key}: tags {tags}"
        report = json.loads(s3.get_object(Bucket=names.output_bucket, Key=key + REPORT_SUFFIX)["Body"].read())
        if report.get("status") != "ok" or report["source"]["key"] != key:
            return f"{key}: report {report.get('status')} for {report.get('source', {}).get('key')}"
        if report["output"]["size"] != head["ContentLength"] or input_etags[key] in json.dumps(report):
            return f"{key}: the report describes another image"
        if str(report["counts"]["face"]) != head["Metadata"].get("anonymizer-faces"):
            return f"{key}: face count differs between report and image"
        if "-face" in key and report["counts"]["face"] < 1:
            return f"{key}: no face found in a face image"
        return None

    with ThreadPoolExecutor(8) as pool:
        return [p for p in pool.map(check, keys) if p]


def format_result(r: dict) -> str:
    faults = ", ".join(f"{k}: {v}" for k, v in sorted(r["faults_fired"].items())) or "none"
    lines = [
        f"load run: {r['objects_in']} objects ({r['valid']} valid, {r['corrupt']} corrupt), "
        f"{r['workers']} workers, batches <= {r['batch_size']}, visibility {r['visibility_timeout_s']} s, "
        f"images <= {r['image_size']} px, seed {r['seed']}",
        f"  in           {r['objects_in']}",
        f"  out          {r['out']}   (output bucket: image + report + tags, checked)",
        f"  failed       {r['failed']}   (DLQ)",
        f"  rejected     {r['rejected']}   (refused for good: failure report, no image, no retry)",
        f"  lost         {r['lost']}",
        f"  duplicated   {r['duplicated']}   (keys published with different bytes)",
        f"  in both      {r['in_both']}   partial {len(r['partial'])}   original bytes published "
        f"{len(r['originals_published'])}   left in queue {r['left_in_queue']}",
        f"  throughput   {r['objects_per_s']} objects/s",
        f"  wall         {r['wall_s']} s processing (+ {r['upload_s']} s upload; {r['total_s']} s in all)",
        f"  invocations  {r['invocations']} ({r['records']} records, {r['record_failures']} failed records, "
        f"{r['crashed_invocations']} crashed, {r['overruns']} over the {r['function_timeout_s']} s timeout, "
        f"slowest batch {r['max_batch_s']} s; {r['poller_errors']} receive/delete errors)",
        f"  faults       {sum(r['faults_fired'].values())} fired of {r['faults_planned']} planned "
        f"({r['fault_rate']:.0%} of valid objects): {faults}",
        f"  reports      {r['report_rewrites']} rewritten by a retry, {r['report_differing']} of them with "
        "different content (time and latency aside)",
    ]
    for name, keys in r["expectation"].items():
        if keys:
            lines.append(f"  UNEXPECTED {name}: {keys[:10]}")
    for name in ("lost_keys", "duplicated_keys", "partial", "foreign_outputs", "outputs_not_recorded"):
        if r[name]:
            lines.append(f"  {name}: {r[name][:10]}")
    for p in r["verify_problems"][:10]:
        lines.append(f"  verify: {p}")
    if r["timed_out"]:
        lines.append("  TIMED OUT before the queue drained")
    lines.append("  result       " + ("OK" if r["ok"] else "FAILED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--objects", type=int, default=1000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--fault-rate", type=float, default=0.02, help="fraction of valid objects with one S3 fault")
    p.add_argument("--corrupt-every", type=int, default=20, help="every N-th object is corrupt (20: 5%%)")
    p.add_argument("--image-size", type=int, default=256, help="longest side of the largest images, px")
    p.add_argument("--visibility-timeout", type=int, default=10, help="queue visibility timeout, s (>= a batch's time)")
    p.add_argument("--function-timeout", type=float, default=None, help="Lambda timeout, s (default: visibility)")
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--time-limit", type=float, default=900.0, help="hard limit for the whole run, s")
    p.add_argument("--no-verify", action="store_true", help="skip reading back every output")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--verbose", action="store_true", help="the function's own log (Powertools, JSON)")
    args = p.parse_args(argv)
    if not 1 <= args.batch_size <= 10:
        p.error("--batch-size must be 1..10 (SQS)")
    result = run_load(
        args.objects,
        args.workers,
        seed=args.seed,
        fault_rate=args.fault_rate,
        corrupt_every=args.corrupt_every,
        image_size=args.image_size,
        visibility_timeout=args.visibility_timeout,
        function_timeout=args.function_timeout,
        batch_size=args.batch_size,
        time_limit=args.time_limit,
        verify=not args.no_verify,
        verbose=args.verbose,
    )
    print(format_result(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
