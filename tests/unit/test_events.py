"""Completion events (detail builders against the JSON Schema, publisher), EventBridge S3 input
parsing, and the Batch Operations task handling (result codes) with small fakes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from anonymizer.aws import batch, events
from anonymizer.aws.s3_flow import FlowConfig, ObjectRef, refs_from_eventbridge_event, refs_from_sqs_body
from anonymizer.errors import DetectionError, InvalidImageError

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "events" / "object-event.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def envelope(detail_type: str, detail: dict) -> dict:
    """What a rule target receives (the envelope EventBridge adds around our detail)."""
    return {
        "version": "0",
        "id": "e-1",
        "source": "anonymizer",
        "detail-type": detail_type,
        "account": "123456789012",
        "time": "2026-12-01T05:00:00Z",
        "region": "eu-west-1",
        "resources": [],
        "detail": detail,
    }


SIDECAR = {
    "status": "ok",
    "anonymizer_version": "0.1.0",
    "source": {"bucket": "in-bucket", "key": "a b/c.jpg", "version_id": "v1", "size": 1234},
    "output": {"bucket": "out-bucket", "key": "a b/c.jpg", "content_type": "image/jpeg", "format": "jpeg", "size": 999},
    "counts": {"face": 2, "plate": 1},
    "models": {"face": "centerface-int8-1", "plate": "plate-0.3"},
    "latency_ms": 123.4,
    "report": {
        "detections": [
            {"label": "face", "score": 0.9, "box": [1, 2, 30, 40], "effect": "blur"},
            {"label": "face", "score": 0.8, "box": [50, 2, 80, 40], "effect": "blur"},
            {"label": "plate", "score": 0.7, "box": [5, 60, 50, 70], "effect": "blur"},
        ],
        "timings_ms": {"decode": 3.0, "detect_face": 50.0, "total": 80.0},
    },
}


def test_anonymized_detail_is_valid_and_carries_no_boxes_by_default():
    detail = events.anonymized_detail(
        SIDECAR, report_key="a b/c.jpg.report.json", output_version_id="ov1", output_etag='"abc"', trigger="backfill"
    )
    VALIDATOR.validate(envelope(events.ANONYMIZED, detail))
    assert detail["input"] == {
        "bucket": "in-bucket",
        "key": "a b/c.jpg",
        "version_id": "v1",
        "etag": None,
        "size": 1234,
    }
    assert detail["output"]["version_id"] == "ov1" and detail["output"]["etag"] == "abc"
    assert detail["counts"] == {"face": 2, "plate": 1}
    assert detail["timings_ms"]["object_total"] == 123.4 and detail["timings_ms"]["detect_face"] == 50.0
    assert "detections" not in detail and "box" not in json.dumps(detail)


def test_boxes_only_when_asked_and_dropped_for_a_crowd():
    detail = events.anonymized_detail(SIDECAR, report_key="k.report.json", include_boxes=True)
    VALIDATOR.validate(envelope(events.ANONYMIZED, detail))
    assert [d["label"] for d in detail["detections"]] == ["face", "face", "plate"]
    assert set(detail["detections"][0]) == {"label", "score", "box"}  # not the effect, nothing else
    crowd = json.loads(json.dumps(SIDECAR))
    crowd["report"]["detections"] = [{"label": "face", "score": 0.5, "box": [1.5, 2.5, 3.5, 4.5]}] * 20000
    detail = events.anonymized_detail(crowd, report_key="k.report.json", include_boxes=True)
    VALIDATOR.validate(envelope(events.ANONYMIZED, detail))
    assert "detections" not in detail and detail["detections_truncated"] is True
    assert len(json.dumps(detail)) < events.MAX_DETAIL_BYTES


def test_failed_detail_is_valid_and_bounded():
    detail = events.failed_detail(
        bucket="in-bucket", key="x.jpg", version_id=None, etag="e", code="invalid_image", message="m" * 5000
    )
    VALIDATOR.validate(envelope(events.FAILED, detail))
    assert detail["error"]["code"] == "invalid_image" and len(detail["error"]["message"]) == events.MAX_MESSAGE_CHARS


def test_schema_rejects_what_it_should():
    good = events.anonymized_detail(SIDECAR, report_key="k.report.json")
    for broken in (
        {**good, "image": "base64..."},  # no content, no unknown fields
        {**good, "counts": {"car": 1}},
        {k: v for k, v in good.items() if k != "output"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            VALIDATOR.validate(envelope(events.ANONYMIZED, broken))
    with pytest.raises(jsonschema.ValidationError):  # a success detail under the failure type
        VALIDATOR.validate(envelope(events.FAILED, good))


class FakeEventsClient:
    def __init__(self, fail: bool = False):
        self.entries: list[dict] = []
        self.fail = fail

    def put_events(self, Entries):  # noqa: N803 - boto3's spelling
        self.entries += Entries
        if self.fail:
            return {"FailedEntryCount": 1, "Entries": [{"ErrorCode": "InternalFailure", "ErrorMessage": "x"}]}
        return {"FailedEntryCount": 0, "Entries": [{"EventId": f"id-{len(self.entries)}"}]}


def test_publisher_sends_one_entry_and_raises_when_refused():
    client = FakeEventsClient()
    pub = events.EventPublisher("my-bus", client=client)
    assert pub.object_anonymized(SIDECAR, report_key="k.report.json", put_response={"VersionId": "ov"}) == "id-1"
    (entry,) = client.entries
    assert entry["Source"] == "anonymizer" and entry["DetailType"] == "Object Anonymized"
    assert entry["EventBusName"] == "my-bus" and json.loads(entry["Detail"])["output"]["version_id"] == "ov"
    with pytest.raises(events.EventPublishError, match="InternalFailure"):
        events.EventPublisher("my-bus", client=FakeEventsClient(fail=True)).publish("Object Failed", {})


def test_publisher_from_env():
    assert events.EventPublisher.from_env({}) is None
    assert events.EventPublisher.from_env({"EVENT_BUS_NAME": " "}) is None
    pub = events.EventPublisher.from_env({"EVENT_BUS_NAME": "default", "EVENT_INCLUDE_BOXES": "true"})
    assert pub.bus_name == "default" and pub.include_boxes is True


class FakeTagStorage:
    def __init__(self, tags: dict):
        self.tags = tags

    def get_tags(self, bucket, key, version_id=None):
        return self.tags


def test_failure_is_announced_once_per_object_and_only_when_permanent():
    ref = ObjectRef("in-bucket", "x.jpg", etag="e")
    client = FakeEventsClient()
    pub = events.EventPublisher("default", client=client)
    assert pub.object_failed_once(FakeTagStorage({}), ref, InvalidImageError("corrupt")) == "id-1"
    # an earlier attempt tagged the input: a redelivery does not announce it again
    tagged = FakeTagStorage({"anonymizer-status": "failed", "anonymizer-error": "invalid_image"})
    assert pub.object_failed_once(tagged, ref, InvalidImageError("corrupt")) is None
    assert pub.object_failed_once(FakeTagStorage({}), ref, DetectionError("model")) is None  # transient
    assert len(client.entries) == 1
    VALIDATOR.validate(envelope(events.FAILED, json.loads(client.entries[0]["Detail"])))


def test_trigger_of():
    assert events.trigger_of("ObjectCreated:Put") == "s3"
    assert events.trigger_of("Object Created:PutObject") == "eventbridge"
    assert events.trigger_of(batch.EVENT_NAME) == "backfill"


# -- EventBridge S3 input -------------------------------------------------------------------------

EVENTS_DIR = ROOT / "events"


def test_eventbridge_object_created_sample_parses():
    event = json.loads((EVENTS_DIR / "eventbridge_s3_object_created.json").read_text())
    (ref,) = refs_from_eventbridge_event(event)
    assert ref.bucket == "anonymizer-input-123456789012"
    assert ref.key == "street/Place de la Gare été.jpg"  # EventBridge carries the key itself
    assert ref.version_id == "096fKKXTRTtl3on89fVO.nfljtsv6qko" and ref.etag == "0f343b0931126a20f133d67c2b018a3b"
    assert ref.size == 245817 and events.trigger_of(ref.event_name) == "eventbridge"
    # through SQS (rule -> queue): the body is the EventBridge event
    sqs = json.loads((EVENTS_DIR / "sqs_eventbridge_object_created.json").read_text())
    assert refs_from_sqs_body(sqs["Records"][0]["body"]) == [ref]


def test_eventbridge_other_events_and_unversioned_buckets():
    base = {"source": "aws.s3", "detail": {"bucket": {"name": "b"}, "object": {"key": "k.jpg", "size": 3}}}
    assert refs_from_eventbridge_event({**base, "detail-type": "Object Deleted"}) == []
    (ref,) = refs_from_eventbridge_event({**base, "detail-type": "Object Created"})
    assert ref.version_id is None and ref.etag is None
    moto_style = {**base, "detail-type": "Object Created"}
    moto_style["detail"] = {"bucket": {"name": "b"}, "object": {"key": "k.jpg", "eTag": "x", "version-id": "null"}}
    assert refs_from_eventbridge_event(moto_style)[0].version_id is None
    with pytest.raises(ValueError):
        refs_from_eventbridge_event({"source": "aws.s3", "detail-type": "Object Created", "detail": {}})


# -- Batch Operations tasks -----------------------------------------------------------------------


class FakeClientError(Exception):
    pass


class FakeS3Client:
    """head_object only: what batch.process_task asks before processing."""

    class exceptions:  # noqa: N801 - boto3's spelling
        ClientError = ClientError

    def __init__(self, objects: dict[str, dict], head_error: Exception | None = None):
        self.objects = objects
        self.head_error = head_error

    def head_object(self, Bucket, Key, VersionId=None):  # noqa: N803
        if self.head_error:
            raise self.head_error
        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "404"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadObject")
        return self.objects[Key]


class FakeBatchStorage:
    def __init__(self, objects, reports=None, outputs=(), head_error=None):
        self.client = FakeS3Client(objects, head_error)
        self.reports = reports or {}
        self.outputs = set(outputs)

    def read_json(self, bucket, key):
        return self.reports.get(key)

    def head(self, bucket, key, version_id=None):
        return object() if key in self.outputs else None


CONFIG = FlowConfig(output_bucket="out")
NOW = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)


def invocation(*keys: str, version: str = "2.0") -> dict:
    return {
        "invocationSchemaVersion": version,
        "invocationId": "inv-1",
        "job": {"id": "job-1", "userArguments": {"k": "v"}},
        "tasks": [{"taskId": f"t{i}", "s3Bucket": "in", "s3Key": k, "s3VersionId": None} for i, k in enumerate(keys)],
    }


def run_tasks(storage, process, *keys):
    answer = batch.handle_invocation(invocation(*keys), process=process, storage=storage, config=CONFIG)
    assert answer["invocationSchemaVersion"] == "2.0" and answer["invocationId"] == "inv-1"
    assert answer["treatMissingKeysAs"] == "PermanentFailure"
    assert [r["taskId"] for r in answer["results"]] == [f"t{i}" for i in range(len(keys))]
    return [(r["resultCode"], r["resultString"]) for r in answer["results"]]


def head(size=10, when=NOW, version=None):
    return {
        "ContentLength": size,
        "ETag": '"etag"',
        "LastModified": when,
        **({"VersionId": version} if version else {}),
    }


def slow_down(*_args, **_kwargs):
    raise ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")


def test_result_codes_for_good_corrupt_throttled_missing_and_broken():
    storage = FakeBatchStorage({k: head() for k in ("good.jpg", "bad.jpg", "slow.jpg", "model.jpg", "a b.jpg")})
    seen = []

    def process(ref):
        seen.append(ref)
        if ref.key == "bad.jpg":  # s3_flow records a permanent failure and returns its summary
            return {"status": "failed", "error": "invalid_image", "message": "not an image"}
        if ref.key == "slow.jpg":
            slow_down()
        if ref.key == "model.jpg":
            raise DetectionError("detector could not run")
        return {"status": "ok", "faces": 1, "plates": 0, "output_bucket": "out", "output_key": ref.key}

    results = run_tasks(storage, process, "good.jpg", "bad.jpg", "slow.jpg", "missing.jpg", "model.jpg", "a+b.jpg")
    assert results == [
        ("Succeeded", "anonymized: 1 face(s), 0 plate(s) -> s3://out/good.jpg"),
        ("PermanentFailure", "invalid_image: not an image"),
        ("TemporaryFailure", results[2][1]),
        ("PermanentFailure", "NoSuchKey: s3://in/missing.jpg does not exist"),
        ("TemporaryFailure", "detection_failed: detector could not run"),
        ("Succeeded", "anonymized: 1 face(s), 0 plate(s) -> s3://out/a b.jpg"),  # key decoded
    ]
    assert results[2][1].startswith("SlowDown:")
    assert seen[0].event_name == batch.EVENT_NAME and seen[0].etag == "etag" and seen[0].size == 10


def test_transient_and_permanent_aws_errors():
    assert batch.is_transient(EndpointConnectionError(endpoint_url="http://x"))
    throttled = ClientError({"Error": {"Code": "ThrottlingException"}, "ResponseMetadata": {}}, "PutEvents")
    assert batch.is_transient(throttled)
    denied = ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    assert not batch.is_transient(denied)
    assert batch.is_transient(events.EventPublishError("down"))
    storage = FakeBatchStorage({}, head_error=denied)
    assert run_tasks(storage, lambda ref: {}, "x.jpg")[0][0] == "PermanentFailure"


def test_already_anonymized_objects_are_skipped_without_processing():
    report = {
        "status": "ok",
        "source": {"bucket": "in", "key": "done.jpg", "size": 10},
        "processed_at": NOW.isoformat(),
    }
    newer = dict(report, source={"bucket": "in", "key": "old.jpg", "size": 10})
    versioned = {"status": "ok", "source": {"bucket": "in", "version_id": "v1", "size": 10}, "processed_at": "x"}
    storage = FakeBatchStorage(
        {
            "done.jpg": head(),
            "old.jpg": head(when=NOW + timedelta(seconds=5)),  # overwritten after its report: again
            "noimage.jpg": head(),
            "v.jpg": head(version="v1"),
            "v2.jpg": head(version="v2"),
        },
        reports={
            "done.jpg.report.json": report,
            "old.jpg.report.json": newer,
            "noimage.jpg.report.json": report,
            "v.jpg.report.json": versioned,
            "v2.jpg.report.json": versioned,
        },
        outputs={"done.jpg", "old.jpg", "v.jpg", "v2.jpg"},  # noimage.jpg: report without image
    )
    processed = []

    def process(ref):
        processed.append(ref.key)
        return {"status": "ok", "output_bucket": "out", "output_key": ref.key}

    results = run_tasks(storage, process, "done.jpg", "old.jpg", "noimage.jpg", "v.jpg", "v2.jpg")
    assert [code for code, _ in results] == ["Succeeded"] * 5
    assert results[0][1].startswith("skipped: already anonymized") and results[3][1].startswith("skipped")
    assert processed == ["old.jpg", "noimage.jpg", "v2.jpg"]


def test_bad_invocations_are_refused():
    for bad in ({}, {"invocationSchemaVersion": "3.0"}, {"invocationSchemaVersion": "2.0", "tasks": [{}]}):
        with pytest.raises(batch.BatchEventError):
            batch.parse_invocation(bad)
    v1 = invocation("a.jpg", version="1.0")
    v1["tasks"][0] = {"taskId": "t0", "s3BucketArn": "arn:aws:s3:::in", "s3Key": "a.jpg", "s3VersionId": "3"}
    (task,) = batch.parse_invocation(v1).tasks
    assert (task.bucket, task.key, task.version_id) == ("in", "a.jpg", "3")
    assert batch.parse_invocation(invocation("x.jpg")).user_arguments == {"k": "v"}


def test_sample_batch_invocation_parses():
    sample = json.loads((EVENTS_DIR / "s3_batch_invocation.json").read_text())
    invocation = batch.parse_invocation(sample)
    (task,) = invocation.tasks
    assert invocation.schema_version == "2.0" and invocation.job_id == "f3cc4f60-61f6-4a2b-8a21-d07600c373ce"
    assert (task.bucket, task.key, task.version_id) == (
        "anonymizer-input-123456789012",
        "street/Place de la Gare été.jpg",
        None,
    )
    # the sample completion event is what the schema describes
    VALIDATOR.validate(json.loads((EVENTS_DIR / "eventbridge_object_anonymized.json").read_text()))
