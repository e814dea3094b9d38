"""Reliability of the S3 path under faults, against moto's real HTTP server (loopback only).

The real handler (``functions/s3_anonymize/app.py``) runs on SQS batches received from moto's
queue, which has the deployed redrive policy (DLQ after ``maxReceiveCount`` = 3). The harness
(:class:`Rig`) does what Lambda's SQS poller does: receive up to 5 messages, invoke, delete the
ones not in ``batchItemFailures``; a crashed invocation deletes nothing, so the whole batch comes
back after the visibility timeout (1 s here; the fake Lambda timeout is 0.9 s, below it, as Lambda
requires). Idempotency is the deployed one: Powertools on moto's DynamoDB.

Faults are injected from the outside, with botocore event hooks on the handler's own clients:

* ``before-parameter-build`` (a "call" fault): the call raises, as when botocore's own retries
  are exhausted — the record fails and SQS redelivers it;
* ``before-send`` (a "wire" fault): an HTTP 503 SlowDown / DynamoDB throttling response or a read
  timeout that botocore's retry policy absorbs;
* ``after-call``: the request succeeded on the server but the client fails afterwards (a lost
  acknowledgement, or a read timeout while streaming the body).

After every scenario: every object is EITHER published (correct image, its report, tags) OR in
the DLQ; none is lost; each key was PUT with at most one distinct body (reports: the same content
apart from time and latency); nothing, and never the original bytes, is published for an object
that failed for good.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import cv2
import numpy as np
import pytest
from botocore.exceptions import ReadTimeoutError

import anonymizer.aws as aws
from anonymizer.aws import s3_flow
from anonymizer.options import parse_options
from anonymizer_local.emulator import FakeLambdaContext, sqs_event

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]

ROOT = Path(__file__).resolve().parents[2]
VISIBILITY_S = 1  # queue visibility timeout (the "retry after" of a failed record)
LAMBDA_TIMEOUT_S = 0.8  # the fake context's timeout (< visibility): Powertools' in-progress expiry


def _load_tool():
    """``tools/load_run.py`` (tools/ is not a package), registered like an import."""
    if "load_run" in sys.modules:
        return sys.modules["load_run"]
    spec = importlib.util.spec_from_file_location("load_run", ROOT / "tools" / "load_run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_run"] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


load_run = _load_tool()
client_error = load_run.client_error


class LambdaKilled(BaseException):  # noqa: N818 - named after what it simulates
    """The runtime killed the process (timeout, out of memory): no ``except Exception`` sees it."""


def read_timeout(what: str = "injected") -> ReadTimeoutError:
    return ReadTimeoutError(endpoint_url=what, error="injected read timeout")


# -- images ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def make_image(astronaut_bgr):
    """``make_image(i)``: a distinct 128 px JPEG with a real face; ``face=False``: without one."""
    with_face = cv2.resize(astronaut_bgr, (128, 128), interpolation=cv2.INTER_AREA)
    without = np.dstack([np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (64, 1))] * 3)  # a gradient

    def make(i: int, *, face: bool = True) -> bytes:
        img = (with_face if face else without).copy()
        img[:3, :3] = ((i * 37) % 256, (i * 91) % 256, 200)  # distinct bytes, away from the face
        return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()

    return make


# -- the rig: handler + hooks + SQS semantics -----------------------------------------------------


class KeyedEngine:
    """The real Anonymizer, counting pipeline runs per object key and able to crash on demand."""

    def __init__(self, inner, state: State):
        self.inner = inner
        self.state = state
        self.kill: Any = None  # callable(key, n) -> bool: raise LambdaKilled on this run

    def anonymize(self, data, options):
        key = self.state.current
        self.state.anonymized[key] += 1
        if self.kill and self.kill(key, self.state.anonymized[key]):
            raise LambdaKilled(f"killed while anonymizing {key}")
        return self.inner.anonymize(data, options)

    def detect(self, data, options):
        return self.inner.detect(data, options)


@dataclass
class State:
    current: str = ""  # the object the handler works on now
    attempts: Counter = field(default_factory=Counter)  # record_handler runs per key
    anonymized: Counter = field(default_factory=Counter)  # pipeline runs per key
    last_s3_key: dict = field(default_factory=dict)  # operation -> key of its latest call


class Rig:
    """One "container" of the S3 function with hooks on its clients, and the SQS poller."""

    def __init__(self, local, fn, engine: KeyedEngine, state: State, real_anonymizer):
        self.local = local
        self.fn = fn
        self.engine = engine
        self.state = state
        self.real = real_anonymizer
        self.sqs = local.client("sqs")
        self.s3 = local.client("s3")
        # records every PutObject body the function sends (botocore runs the more specific
        # call-level fault hooks first: a PUT failed by one of them is not recorded)
        self.tap = load_run.S3Tap()
        self.tap.install(fn.storage.client)
        self.fired: Counter = Counter()
        self.inputs: dict[str, bytes] = {}
        self.invocations: list[dict] = []

    # faults ---------------------------------------------------------------------------------

    def fault(self, stage: str, operation: str, key: str | None, action: Any, *, times: int | None = 1) -> None:
        """On the handler's client: ``stage`` "call" (before-parameter-build), "send" (before-send)
        or "after" (after-call); ``operation`` e.g. "s3.GetObject", "dynamodb.UpdateItem";
        ``key`` the S3 key of the call, or for DynamoDB the object being processed (None: any);
        ``action`` an exception (factory) to raise, or for "send" a response to return;
        ``times`` how often (None: always)."""
        service, name = operation.split(".")
        client = self.fn.storage.client if service == "s3" else self.fn.persistence_layer.client
        event = {"call": "before-parameter-build", "send": "before-send", "after": "after-call"}[stage]
        label = f"{stage} {operation} {key}"

        def hook(**kwargs: Any) -> Any:
            if service == "s3":
                params = kwargs.get("params") or {}
                call_key = params.get("Key") if stage == "call" else None
                if call_key is None and "request" in kwargs:
                    call_key = load_run._key_from_url(kwargs["request"].url)
                if call_key is None and stage == "after":
                    call_key = self.state.last_s3_key.get(name)
            else:
                call_key = self.state.current
            if key is not None and call_key != key:
                return None
            if times is not None and self.fired[label] >= times:
                return None
            self.fired[label] += 1
            result = action(kwargs) if callable(action) and not isinstance(action, type) else action
            if isinstance(result, BaseException):
                raise result
            return result

        client.meta.events.register(f"{event}.{service}.{name}", hook)

    # the poller -----------------------------------------------------------------------------

    def upload(self, objects: dict[str, bytes]) -> None:
        for key, data in objects.items():
            self.s3.put_object(Bucket=self.local.names.input_bucket, Key=key, Body=data)
            self.inputs[key] = data

    def queued(self) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.local.resources["queue_url"],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def receive(self, n: int = 5) -> list[dict]:
        return self.sqs.receive_message(
            QueueUrl=self.local.resources["queue_url"], MaxNumberOfMessages=n, AttributeNames=["All"]
        ).get("Messages", [])

    def invoke(self, messages: list[dict], *, delete: bool = True, timeout_s: float = LAMBDA_TIMEOUT_S) -> dict:
        """One Lambda invocation on these messages, settled as the SQS poller does."""
        event = sqs_event(messages, self.local.resources["queue_arn"])
        record = {"keys": [k for m in messages for k in keys_of(m)], "crashed": False, "failed": []}
        try:
            response = self.fn.lambda_handler(event, FakeLambdaContext(timeout_s=timeout_s))
        except LambdaKilled:
            record["crashed"] = True  # nothing deleted: the whole batch comes back
            self.invocations.append(record)
            return record
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        record["failed"] = [k for m in messages if m["MessageId"] in failed for k in keys_of(m)]
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
            for i, m in enumerate(messages)
            if m["MessageId"] not in failed
        ]
        if delete and entries:
            self.sqs.delete_message_batch(QueueUrl=self.local.resources["queue_url"], Entries=entries)
        self.invocations.append(record)
        return record

    def deliver(self) -> dict | None:
        messages = self.receive()
        return self.invoke(messages) if messages else None

    def run(self, *, deadline_s: float = 15.0, max_invocations: int = 40) -> list[dict]:
        """Poll until the queue is empty (failed records reappear after the visibility timeout;
        moto moves them to the DLQ on the receive after the 3rd)."""
        deadline = time.monotonic() + deadline_s
        done = []
        quiet = 0
        while time.monotonic() < deadline and len(done) < max_invocations:
            got = self.deliver()
            if got is not None:
                done.append(got)
                quiet = 0
                continue
            # moto counts visible and in-flight messages one after the other: a message whose
            # visibility timeout ends in between is in neither count; so: empty twice in a row
            quiet = quiet + 1 if self.queued() == 0 else 0
            if quiet >= 2:
                return done
            time.sleep(0.1)
        raise AssertionError(f"the queue did not drain: {self.queued()} message(s) left after {done}")

    def drain_test_events(self) -> None:
        """moto queues an s3:TestEvent when the notification is configured; take it out first."""
        for _ in range(5):
            messages = self.receive(10)
            if not messages:
                return
            self.invoke(messages)

    # what ended where ------------------------------------------------------------------------

    def output(self) -> dict[str, bytes]:
        bucket = self.local.names.output_bucket
        keys = [o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        return {k: self.s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}

    def dlq_keys(self) -> Counter:
        """Keys of the messages in the DLQ (left there, visible again afterwards)."""
        keys: Counter = Counter()
        handles = []
        url = self.local.resources["dlq_url"]
        for _ in range(20):
            got = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30).get(
                "Messages", []
            )
            if not got:
                break
            keys.update(k for m in got for k in keys_of(m))
            handles += [m["ReceiptHandle"] for m in got]
        for handle in handles:
            self.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=0)
        return keys

    def idempotency_items(self) -> list[dict]:
        return self.local.client("dynamodb").scan(TableName=self.local.names.table)["Items"]

    def expected_image(self, key: str) -> bytes:
        """What the function must publish: the pipeline is deterministic (seeded by pixels)."""
        options = parse_options({}, defaults=self.fn.config.defaults)
        return self.real.anonymize(self.inputs[key], options).data

    def assert_settled(
        self,
        *,
        ok: set[str],
        dlq: set[str],
        allow_both: set[str] = frozenset(),
        rejected: set[str] = frozenset(),
    ) -> dict:
        """Every input either published (correctly), refused for good (a failure report, no image,
        not in the DLQ) or in the DLQ; nothing lost, nothing twice."""
        assert self.queued() == 0, f"{self.queued()} message(s) left; invocations: {self.invocations}"
        assert ok | dlq | rejected == set(self.inputs), "lost objects"
        dlq_found = self.dlq_keys()
        assert set(dlq_found) == dlq and all(n == 1 for n in dlq_found.values()), dlq_found
        out = self.output()
        images = {k for k in out if not k.endswith(s3_flow.REPORT_SUFFIX)}
        reports = {k[: -len(s3_flow.REPORT_SUFFIX)] for k in out if k.endswith(s3_flow.REPORT_SUFFIX)}
        assert images == ok | (allow_both & images), images
        assert reports == images | rejected, (images, reports)
        assert not (images & dlq) - allow_both, "published AND in the DLQ"
        for key in rejected:
            report = json.loads(out[key + s3_flow.REPORT_SUFFIX])
            assert report["status"] == "failed" and report["error"] and report["message"], report
        bucket = self.local.names.output_bucket
        for key in images:
            assert out[key] == self.expected_image(key), f"{key}: not the anonymized image"
            head = self.s3.head_object(Bucket=bucket, Key=key)
            source_etag = hashlib.md5(self.inputs[key]).hexdigest()
            assert head["ContentType"] == "image/jpeg"
            assert source_etag not in json.dumps(head["Metadata"])  # the original's MD5 never travels along
            tags = {t["Key"]: t["Value"] for t in self.s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
            assert tags["anonymizer-status"] == "ok" and tags["anonymizer-model"].startswith("face=")
            report = json.loads(out[key + s3_flow.REPORT_SUFFIX])
            assert report["status"] == "ok" and report["source"]["key"] == key
            assert source_etag not in out[key + s3_flow.REPORT_SUFFIX].decode()
            assert report["output"]["size"] == len(out[key])
            assert str(report["counts"]["face"]) == head["Metadata"]["anonymizer-faces"]
        # every PUT the function attempted: one distinct body per key, never an original
        originals = {hashlib.md5(b).hexdigest() for b in self.inputs.values()}
        for key, digests in self.tap.image_digests().items():
            assert len(digests) == 1, f"{key} was written with {len(digests)} different bodies"
            assert not digests & originals, f"{key}: the original bytes were written"
        assert self.tap.report_writes()[1] == 0, "a report was rewritten with different content"
        return out

    def image_puts(self, key: str) -> int:
        return len(self.tap.puts.get(key, []))


def keys_of(message: dict) -> list[str]:
    return load_run._keys_of(message)


@pytest.fixture
def rig(local, load_fn, real_anonymizer, monkeypatch) -> Rig:
    fn = load_fn("s3_anonymize", ANONYMIZER_TARGETS="face")
    state = State()
    engine = KeyedEngine(real_anonymizer, state)
    previous = aws.set_anonymizer(engine)
    real_record_handler = fn.record_handler

    def record_handler(record):  # knows which object the function is working on
        for key in (r["s3"]["object"]["key"] for r in json.loads(record.body).get("Records", [])):
            state.current = unquote_plus(key)
            state.attempts[state.current] += 1
        return real_record_handler(record)

    monkeypatch.setattr(fn, "record_handler", record_handler)

    def remember_key(params, model, **_):
        state.last_s3_key[model.name] = params.get("Key")

    fn.storage.client.meta.events.register("before-parameter-build.s3", remember_key)
    local.client("sqs").set_queue_attributes(
        QueueUrl=local.resources["queue_url"], Attributes={"VisibilityTimeout": str(VISIBILITY_S)}
    )
    r = Rig(local, fn, engine, state, real_anonymizer)
    r.drain_test_events()
    yield r
    aws.set_anonymizer(previous)


# -- S3 read faults -------------------------------------------------------------------------------


class FlakyBody:
    """A GetObject body whose read times out (the connection stalls mid-download)."""

    def __init__(self, inner):
        self.inner = inner

    def read(self, *args):
        raise read_timeout("while streaming the body")

    def close(self):
        self.inner.close()


def swap_body(kwargs):
    kwargs["parsed"]["Body"] = FlakyBody(kwargs["parsed"]["Body"])


def test_transient_read_faults_are_retried_and_published(rig, make_image):
    call_level = {
        "read/get-500.jpg": ("call", "s3.GetObject", client_error("InternalError", 500, "GetObject")),
        "read/get-slowdown.jpg": ("call", "s3.GetObject", client_error("SlowDown", 503, "GetObject")),
        "read/get-timeout.jpg": ("call", "s3.GetObject", read_timeout()),
        "read/head-500.jpg": ("call", "s3.HeadObject", client_error("InternalError", 500, "HeadObject")),
        "read/body-timeout.jpg": ("after", "s3.GetObject", swap_body),
    }
    wire_level = {  # botocore's own retries absorb these: no SQS retry needed
        "read/wire-slowdown.jpg": ("send", "s3.GetObject", lambda kw: slowdown(kw["request"].url)),
        "read/wire-timeout.jpg": ("send", "s3.GetObject", lambda kw: read_timeout(kw["request"].url)),
    }
    for key, (stage, op, action) in {**call_level, **wire_level}.items():
        rig.fault(stage, op, key, action)
    rig.upload({key: make_image(i, face=i % 2 == 0) for i, key in enumerate([*call_level, *wire_level])})

    rig.run()

    rig.assert_settled(ok=set(rig.inputs), dlq=set())
    assert sum(rig.fired.values()) == len(call_level) + len(wire_level)  # every fault fired once
    assert {k: rig.state.attempts[k] for k in call_level} == dict.fromkeys(call_level, 2)
    assert {k: rig.state.attempts[k] for k in wire_level} == dict.fromkeys(wire_level, 1)
    for key in rig.inputs:
        assert rig.image_puts(key) == 1  # published once


def slowdown(url: str):
    return load_run.s3_error_response(url, "SlowDown", 503)


# -- S3 write faults ------------------------------------------------------------------------------


def test_transient_write_faults_are_retried_and_never_leave_a_partial_result(rig, make_image):
    faults = {
        # the image PUT fails: the report written just before is deleted again, then the retry
        "write/image-500.jpg": ("call", client_error("InternalError", 500, "PutObject")),
        # the image PUT reached S3 but its answer was lost: the retry writes the same bytes again
        "write/image-lost-ack.jpg": ("after", read_timeout()),
        # only the report fails: the image is never written before its report
        "write/report-500.jpg.report.json": ("call", client_error("InternalError", 500, "PutObject")),
        "write/report-lost-ack.jpg.report.json": ("after", read_timeout()),
        "write/wire-slowdown.jpg": ("send", lambda kw: slowdown(kw["request"].url)),
    }
    for key, (stage, action) in faults.items():
        rig.fault(stage, "s3.PutObject", key, action)
    keys = [k.removesuffix(".report.json") for k in faults]
    rig.upload({key: make_image(10 + i) for i, key in enumerate(keys)})

    first = rig.deliver()  # all five in one batch
    assert sorted(first["keys"]) == sorted(keys) and sorted(first["failed"]) == sorted(keys[:4])
    out = rig.output()
    # after the failed attempt: no image without its report, no report without its image except
    # where the image PUT succeeded on the server (lost ack) or the report's own ack was lost
    assert "write/image-500.jpg.report.json" not in out
    assert "write/report-500.jpg" not in out and "write/report-lost-ack.jpg" not in out
    assert {"write/image-lost-ack.jpg", "write/image-lost-ack.jpg.report.json"} <= set(out)
    assert ("DeleteObject", "write/image-500.jpg.report.json") in rig.tap.calls
    assert ("DeleteObject", "write/image-lost-ack.jpg.report.json") not in rig.tap.calls  # the image exists

    rig.run()

    rig.assert_settled(ok=set(keys), dlq=set())
    assert rig.image_puts("write/image-lost-ack.jpg") == 2  # same bytes twice (asserted in assert_settled)
    assert rig.image_puts("write/wire-slowdown.jpg") == 1 and rig.state.attempts["write/wire-slowdown.jpg"] == 1
    assert rig.image_puts("write/report-500.jpg") == 1  # the image was only ever written after its report
    for key in keys:
        assert rig.tap.calls.index(("PutObject", key + ".report.json")) < rig.tap.calls.index(("PutObject", key))


# -- permanent faults -----------------------------------------------------------------------------


def test_persistent_faults_end_in_the_dlq_and_bad_images_are_refused_once(rig, make_image):
    """S3 faults that never clear are retried 3 times, then the DLQ; a corrupt image is refused on
    its first try (a failure report, no retry, no DLQ trip: retrying cannot fix it)."""
    rig.fault("call", "s3.GetObject", "perm/get-500.jpg", client_error("InternalError", 500, "GetObject"), times=None)
    rig.fault("call", "s3.PutObject", "perm/image-put.jpg", client_error("SlowDown", 503, "PutObject"), times=None)
    rig.fault(
        "call",
        "s3.PutObject",
        "perm/report-put.jpg.report.json",
        client_error("InternalError", 500, "PutObject"),
        times=None,
    )
    good = make_image(20)
    rig.upload(
        {
            "perm/get-500.jpg": make_image(21),
            "perm/image-put.jpg": make_image(22),
            "perm/report-put.jpg": make_image(23),
            "perm/corrupt.jpg": good[: len(good) // 3],
            "perm/good.jpg": good,
        }
    )

    rig.run()

    failed = {"perm/get-500.jpg", "perm/image-put.jpg", "perm/report-put.jpg"}
    rig.assert_settled(ok={"perm/good.jpg"}, dlq=failed, rejected={"perm/corrupt.jpg"})
    assert all(rig.state.attempts[k] == 3 for k in failed)  # maxReceiveCount
    assert rig.state.attempts["perm/corrupt.jpg"] == 1  # refused for good on the first try
    assert rig.image_puts("perm/report-put.jpg") == 0  # never the image without its report
    assert rig.image_puts("perm/corrupt.jpg") == 0
    # the input object is untouched but for the "why" tags (codes only; the message is in the report)
    failed.add("perm/corrupt.jpg")
    s3 = rig.s3
    tags = {
        t["Key"]: t["Value"]
        for t in s3.get_object_tagging(Bucket=rig.local.names.input_bucket, Key="perm/corrupt.jpg")["TagSet"]
    }
    assert tags["anonymizer-error"] == "invalid_image"
    for key in failed:
        assert s3.get_object(Bucket=rig.local.names.input_bucket, Key=key)["Body"].read() == rig.inputs[key]


# -- throttling of the idempotency table -----------------------------------------------------------


def throttled(kwargs):
    from botocore.awsrequest import AWSResponse

    body = b'{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate exceeded"}'
    return AWSResponse(kwargs["request"].url, 400, {"Content-Type": "application/x-amz-json-1.0"}, load_run._Raw(body))


def test_throttled_idempotency_table(rig, make_image):
    throttling = client_error("ThrottlingException", 400, "PutItem")
    # saving INPROGRESS fails (SDK retries exhausted): the record fails before any work
    rig.fault("call", "dynamodb.PutItem", "ddb/put-throttled.jpg", throttling)
    # saving COMPLETED fails AFTER publication: the record stays INPROGRESS until the Lambda
    # timeout passes, then the retry runs the pipeline again and writes the same bytes
    rig.fault(
        "call",
        "dynamodb.UpdateItem",
        "ddb/update-throttled.jpg",
        client_error("ThrottlingException", 400, "UpdateItem"),
    )
    # a throttled response that botocore retries by itself
    rig.fault("send", "dynamodb.PutItem", "ddb/wire-throttled.jpg", throttled)
    keys = ["ddb/put-throttled.jpg", "ddb/update-throttled.jpg", "ddb/wire-throttled.jpg"]
    rig.upload({key: make_image(30 + i) for i, key in enumerate(keys)})

    first = rig.deliver()
    assert sorted(first["failed"]) == ["ddb/put-throttled.jpg", "ddb/update-throttled.jpg"]
    statuses = sorted(item["status"]["S"] for item in rig.idempotency_items())
    assert statuses == ["COMPLETED", "INPROGRESS"]  # wire-throttled done, update-throttled stuck
    assert "ddb/update-throttled.jpg" in rig.output()  # published, though the record failed

    rig.run()

    rig.assert_settled(ok=set(keys), dlq=set())
    assert rig.state.anonymized == Counter(
        {"ddb/put-throttled.jpg": 1, "ddb/update-throttled.jpg": 2, "ddb/wire-throttled.jpg": 1}
    )
    assert rig.image_puts("ddb/update-throttled.jpg") == 2  # identical bytes both times
    assert [item["status"]["S"] for item in rig.idempotency_items()] == ["COMPLETED"] * 3
    assert sum(rig.fired.values()) == 3


# -- Lambda killed mid-batch -----------------------------------------------------------------------


def test_lambda_killed_mid_batch_then_redelivered(rig, make_image):
    # room for a duplicate delivery before the killed invocation's timeout (1.8 s) has passed
    rig.sqs.set_queue_attributes(QueueUrl=rig.local.resources["queue_url"], Attributes={"VisibilityTimeout": "2"})
    rig.upload({f"kill/{i}.jpg": make_image(40 + i, face=i != 1) for i in range(4)})
    messages = rig.receive()
    order = [k for m in messages for k in keys_of(m)]
    assert len(order) == 4
    third = order[2]
    rig.engine.kill = lambda key, n: key == third and n == 1  # dies on the 3rd record, once

    started = time.time()
    crashed = rig.invoke(messages, timeout_s=1.8)
    # the same batch again at once (e.g. a duplicate delivery): the killed record is still
    # "in progress" until the dead invocation's timeout has passed -> it fails, nothing is redone
    again = rig.invoke(messages, delete=False)
    assert time.time() - started < 1.5, "too slow to observe the in-progress window"

    assert crashed["crashed"]
    assert again["failed"] == [third]
    assert rig.state.anonymized[order[0]] == rig.state.anonymized[order[1]] == 1  # idempotent hits
    out = rig.output()
    # published: those before the crash, and the 4th by the duplicate delivery
    assert {k for k in out if not k.endswith(".json")} == {order[0], order[1], order[3]}
    (stuck,) = [i for i in rig.idempotency_items() if i["status"]["S"] == "INPROGRESS"]
    expiry_ms = int(stuck["in_progress_expiration"]["N"])
    assert started * 1000 < expiry_ms <= (started + 1.8) * 1000 + 50  # Powertools: start + remaining time

    rig.run()  # after the visibility timeout (> the Lambda timeout): all of it

    rig.assert_settled(ok=set(order), dlq=set())
    assert rig.state.anonymized == Counter({order[0]: 1, order[1]: 1, third: 2, order[3]: 1})
    assert all(rig.image_puts(k) == 1 for k in order)


def test_lambda_killed_between_report_and_image(rig, make_image):
    key = "kill/between.jpg"
    rig.fault("call", "s3.PutObject", key, LambdaKilled("killed before the image PUT"))
    rig.upload({key: make_image(50)})

    assert rig.deliver()["crashed"]
    out = rig.output()
    assert list(out) == [key + ".report.json"]  # not published: GET /results looks for the image
    rig.run()

    rig.assert_settled(ok={key}, dlq=set())
    # the killed image PUT never left the client (call-level hooks run before the recorder)
    assert rig.image_puts(key + ".report.json") == 2 and rig.image_puts(key) == 1
    assert rig.tap.image_digests()[key] and len(rig.tap.image_digests()[key]) == 1


def test_poison_record_killing_every_time_then_dlq_redrive(rig, make_image):
    keys = ["poison/a.jpg", "poison/killer.jpg", "poison/b.jpg"]
    rig.upload({k: make_image(60 + i) for i, k in enumerate(keys)})
    rig.engine.kill = lambda key, n: key == "poison/killer.jpg"  # e.g. runs out of memory, always

    rig.run()

    # after 3 crashed deliveries the whole batch is in the DLQ; records processed before the
    # killer in some delivery were published (idempotency COMPLETED) and are ALSO in the DLQ
    published = {k for k in rig.output() if not k.endswith(".json")}
    assert "poison/killer.jpg" not in published
    rig.assert_settled(ok=published, dlq=set(keys), allow_both=published)
    completed = {json.loads(i["data"]["S"])["key"] for i in rig.idempotency_items() if i["status"]["S"] == "COMPLETED"}
    assert published <= completed  # so a redrive is a no-op for them

    # the fix ships, the DLQ is redriven: the published ones are idempotent hits, the rest runs
    rig.engine.kill = None
    runs_before = Counter(rig.state.anonymized)
    sqs = rig.sqs
    moved = []
    for _ in range(10):
        got = sqs.receive_message(QueueUrl=rig.local.resources["dlq_url"], MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            break
        for m in got:
            sqs.send_message(QueueUrl=rig.local.resources["queue_url"], MessageBody=m["Body"])
            sqs.delete_message(QueueUrl=rig.local.resources["dlq_url"], ReceiptHandle=m["ReceiptHandle"])
            moved += keys_of(m)
    assert sorted(moved) == sorted(keys)
    rig.run()

    rig.assert_settled(ok=set(keys), dlq=set())
    for key in published:
        assert rig.state.anonymized[key] == runs_before[key] == 1 and rig.image_puts(key) == 1


# -- fail closed at the handler level --------------------------------------------------------------


def test_detector_that_fails_to_load_or_mid_run_publishes_nothing(rig, make_image, monkeypatch):
    from anonymizer.pipeline import Anonymizer

    keys = ["closed/a.jpg", "closed/b.jpg", "closed/c.jpg"]
    rig.upload({k: make_image(70 + i) for i, k in enumerate(keys)})
    messages = rig.receive()
    assert len(messages) == 3

    # 1. the model does not load: every record fails, nothing is written anywhere
    def broken_factory(label):
        raise RuntimeError(f"{label} model file is corrupt")

    rig.engine.inner = Anonymizer(detector_factory=broken_factory)
    assert sorted(rig.invoke(messages, delete=False)["failed"]) == sorted(keys)

    # 2. the handler's anonymizer factory itself raises
    def no_anonymizer():
        raise MemoryError("cannot allocate the model")

    with monkeypatch.context() as m:
        m.setattr(rig.fn, "get_anonymizer", no_anonymizer)
        assert sorted(rig.invoke(messages, delete=False)["failed"]) == sorted(keys)

    # 3. the detector raises in the middle of the run (second image only)
    from anonymizer.detection import get_detector

    calls = Counter()

    class Flaky:
        def __init__(self, inner):
            self.inner, self.card = inner, inner.card

        def detect(self, *args, **kwargs):
            calls["detect"] += 1
            if calls["detect"] == 2:
                raise RuntimeError("onnxruntime: CUDA error / bad allocation")
            return self.inner.detect(*args, **kwargs)

    rig.engine.inner = Anonymizer(detector_factory=lambda label: Flaky(get_detector(label)))
    third = rig.invoke(messages)
    assert len(third["failed"]) == 1
    out = rig.output()
    assert set(out) == {k + sfx for k in keys if k not in third["failed"] for sfx in ("", ".report.json")}
    assert rig.image_puts(third["failed"][0]) == 0

    for key in keys:  # input objects untouched, not even tagged (a 5xx may be transient)
        tags = rig.s3.get_object_tagging(Bucket=rig.local.names.input_bucket, Key=key)["TagSet"]
        assert tags == []

    rig.run()  # the detector works again: the retry publishes the last one

    rig.assert_settled(ok=set(keys), dlq=set())


# -- a small load run (the CI-sized version of tools/load_run.py) -----------------------------------


def test_small_load_run_loses_and_duplicates_nothing():
    result = load_run.run_load(
        40,
        2,
        seed=11,
        fault_rate=0.25,  # many faults in a few objects
        image_size=128,
        visibility_timeout=1,
        time_limit=50,
        log=lambda *_: None,
    )
    assert result["ok"], load_run.format_result(result)
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["in_both"] == 0
    # corrupt objects are refused on their first try (failure report), never retried into the DLQ
    assert result["out"] == result["valid"] == 38 and result["rejected"] == result["corrupt"] == 2
    assert result["failed"] == 0
    assert sum(result["faults_fired"].values()) >= 5
