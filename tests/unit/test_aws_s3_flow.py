"""S3 flow: events -> object refs (key decoding), process one object, fail closed."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from aws_fakes import FakeAnonymizer, make_jpeg
from moto import mock_aws

from anonymizer.aws import s3_flow
from anonymizer.aws.s3_flow import ConfigurationError, FlowConfig, ObjectRef, process_object
from anonymizer.aws.storage import S3Storage
from anonymizer.errors import ImageTooLargeError, InvalidImageError, InvalidOptionsError
from anonymizer.options import Options

IN, OUT = "in-bucket", "out-bucket"
EVENTS = Path(__file__).resolve().parents[2] / "events"


def s3_event(key_encoded: str, *, bucket: str = IN, size: int | None = 10, name: str = "ObjectCreated:Put", **obj):
    o = {"key": key_encoded, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "0A1B2C3D4E5F678901", **obj}
    if size is not None:
        o["size"] = size
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2026-01-01T00:00:00.000Z",
                "eventName": name,
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": o,
                },
            }
        ]
    }


@pytest.mark.parametrize(
    ("encoded", "key"),
    [
        ("photos/street+scene+%2B1.jpg", "photos/street scene +1.jpg"),
        ("..%2Fx.jpg", "../x.jpg"),
        ("../x.jpg", "../x.jpg"),
        ("%252e%252e/x.jpg", "%2e%2e/x.jpg"),  # the key really is "%2e%2e/x.jpg"
        ("%C3%BCn%C3%AFc%C3%B6d%C3%A9/%D1%84%D0%BE%D1%82%D0%BE.jpg", "ünïcödé/фото.jpg"),
    ],
)
def test_keys_are_url_decoded(encoded, key):
    (ref,) = s3_flow.refs_from_s3_event(s3_event(encoded))
    assert ref.key == key and ref.bucket == IN and ref.size == 10 and ref.etag


def test_sample_events_parse():
    sqs = json.loads((EVENTS / "sqs_s3_put.json").read_text())
    (ref,) = s3_flow.refs_from_sqs_body(sqs["Records"][0]["body"])
    assert ref.key == "street/Place de la Gare été.jpg"
    assert ref.version_id == "096fKKXTRTtl3on89fVO.nfljtsv6qko"
    assert s3_flow.refs_from_s3_event(json.loads((EVENTS / "s3_put.json").read_text())) == [ref]


def test_test_events_removals_and_sns_envelopes():
    assert s3_flow.refs_from_sqs_body(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == []
    assert s3_flow.refs_from_s3_event(s3_event("a.jpg", name="ObjectRemoved:Delete")) == []
    sns = {"Type": "Notification", "Message": json.dumps(s3_event("a+b.jpg"))}
    assert [r.key for r in s3_flow.refs_from_sqs_body(json.dumps(sns))] == ["a b.jpg"]
    with pytest.raises(ValueError):
        s3_flow.refs_from_sqs_body("not json")


def test_model_tag_is_a_valid_tag_value():
    assert s3_flow.model_tag({"plate": "p;1", "face": "centerface-1.5"}) == "face=centerface-1.5 plate=p_1"
    assert s3_flow.model_tag({}) == "unknown"


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=IN)
        client.create_bucket(Bucket=OUT)
        yield client


def _put(s3, key, body, **kwargs):
    etag = s3.put_object(Bucket=IN, Key=key, Body=body, **kwargs)["ETag"].strip('"')
    return ObjectRef(bucket=IN, key=key, etag=etag, size=len(body))


def _output_keys(s3):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=OUT).get("Contents", []))


CONFIG = FlowConfig(output_bucket=OUT, defaults=Options(targets=("face",)), max_object_bytes=100_000)


def test_process_object_publishes_image_then_report(s3):
    ref = _put(s3, "ünïcödé/фото.jpg", make_jpeg(), Metadata={"anonymize-face-effect": "pixelate"})
    fake = FakeAnonymizer(faces=2)
    summary = process_object(ref, storage=S3Storage(s3), anonymizer=fake, config=CONFIG)

    assert summary["status"] == "ok" and summary["faces"] == 2 and summary["plates"] == 0
    assert summary["output_key"] == ref.key  # the same key, in the output bucket
    assert fake.calls[0][1].face.effect == "pixelate"  # per-object option from metadata
    assert _output_keys(s3) == sorted([ref.key, ref.key + ".report.json"])
    head = s3.head_object(Bucket=OUT, Key=ref.key)
    assert head["ContentType"] == "image/jpeg"
    assert head["Metadata"]["anonymizer-faces"] == "2"
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=OUT, Key=ref.key)["TagSet"]}
    assert tags == {"anonymizer-status": "ok", "anonymizer-model": "face=fake-face-1"}
    report = json.loads(s3.get_object(Bucket=OUT, Key=ref.key + ".report.json")["Body"].read())
    assert report["source"]["key"] == ref.key and report["counts"] == {"face": 2, "plate": 0}
    assert len(report["report"]["detections"]) == 2 and report["options"] == {"face.effect": "pixelate"}
    # nothing was written to the input bucket
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=IN)["Contents"]] == [ref.key]
    assert s3.get_object_tagging(Bucket=IN, Key=ref.key)["TagSet"] == []


def test_tags_override_metadata(s3):
    ref = _put(s3, "t.jpg", make_jpeg(), Metadata={"anonymize-effect": "pixelate"}, Tagging="anonymize-effect=fill")
    fake = FakeAnonymizer()
    process_object(ref, storage=S3Storage(s3), anonymizer=fake, config=CONFIG)
    assert fake.calls[0][1].face.effect == "fill"


def test_corrupt_object_fails_and_publishes_nothing(s3):
    ref = _put(s3, "bad.jpg", b"\xff\xd8\xff" + b"garbage" * 10)
    with pytest.raises(InvalidImageError):
        process_object(ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=CONFIG)
    assert _output_keys(s3) == []
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=IN, Key="bad.jpg")["TagSet"]}
    assert tags["anonymizer-status"] == "failed" and tags["anonymizer-error"] == "invalid_image"


def test_detector_crash_fails_closed_without_failure_tag(s3):
    ref = _put(s3, "ok.jpg", make_jpeg(), Tagging="owner=me")
    with pytest.raises(RuntimeError):
        process_object(
            ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(fail_with=RuntimeError("onnx")), config=CONFIG
        )
    assert _output_keys(s3) == []
    assert s3.get_object_tagging(Bucket=IN, Key="ok.jpg")["TagSet"] == [{"Key": "owner", "Value": "me"}]


def test_failure_tags_keep_existing_tags(s3):
    ref = _put(s3, "bad.jpg", b"nope", Tagging="owner=me&anonymize-targets=face")
    with pytest.raises(InvalidImageError):
        process_object(ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=CONFIG)
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=IN, Key="bad.jpg")["TagSet"]}
    assert tags["owner"] == "me" and tags["anonymize-targets"] == "face" and tags["anonymizer-status"] == "failed"


def test_too_large_by_event_size_is_rejected_without_any_read(s3, monkeypatch):
    ref = ObjectRef(bucket=IN, key="huge.jpg", etag="abc", size=CONFIG.max_object_bytes + 1)
    storage = S3Storage(s3)
    monkeypatch.setattr(storage, "read", lambda *a, **k: pytest.fail("read an object over the limit"))
    with pytest.raises(ImageTooLargeError):
        process_object(ref, storage=storage, anonymizer=FakeAnonymizer(), config=CONFIG)
    assert _output_keys(s3) == []


def test_too_large_by_head_is_rejected_before_download(s3, monkeypatch):
    ref = _put(s3, "big.jpg", b"x" * (CONFIG.max_object_bytes + 5))
    ref = ObjectRef(bucket=IN, key=ref.key, etag=ref.etag, size=None)  # the event did not say
    storage = S3Storage(s3)
    monkeypatch.setattr(storage.client, "get_object", lambda **k: pytest.fail("downloaded"))
    fake = FakeAnonymizer()
    with pytest.raises(ImageTooLargeError):
        process_object(ref, storage=storage, anonymizer=fake, config=CONFIG)
    assert fake.calls == [] and _output_keys(s3) == []


def test_deployment_only_option_is_refused(s3):
    ref = _put(s3, "m.jpg", make_jpeg(), Metadata={"anonymize-max-pixels": "999999999"})
    with pytest.raises(InvalidOptionsError, match="ANONYMIZER_MAX_PIXELS"):
        process_object(ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=CONFIG)


def test_unknown_object_option_is_refused(s3):
    ref = _put(s3, "u.jpg", make_jpeg(), Metadata={"anonymize-sparkle": "yes"})
    with pytest.raises(InvalidOptionsError, match="unknown option"):
        process_object(ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=CONFIG)
    assert _output_keys(s3) == []


def test_skips_folder_markers_deleted_and_overwritten_objects(s3):
    storage, fake = S3Storage(s3), FakeAnonymizer()
    folder = ObjectRef(bucket=IN, key="folder/", etag="d41d8cd98f00b204e9800998ecf8427e", size=0)
    assert process_object(folder, storage=storage, anonymizer=fake, config=CONFIG)["status"] == "skipped"
    gone = ObjectRef(bucket=IN, key="gone.jpg", etag="abc", size=10)
    assert process_object(gone, storage=storage, anonymizer=fake, config=CONFIG)["status"] == "skipped"
    old = _put(s3, "o.jpg", make_jpeg(seed=1))
    _put(s3, "o.jpg", make_jpeg(seed=2))  # overwritten: the newer event will process it
    summary = process_object(old, storage=storage, anonymizer=fake, config=CONFIG)
    assert summary["status"] == "skipped" and "overwritten" in summary["reason"]
    assert fake.calls == [] and _output_keys(s3) == []


def test_refuses_to_write_into_the_input_bucket(s3):
    ref = _put(s3, "a.jpg", make_jpeg())
    config = FlowConfig(output_bucket=IN)
    with pytest.raises(ConfigurationError):
        process_object(ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=config)


def test_flow_config_from_env():
    config = FlowConfig.from_env({"OUTPUT_BUCKET": OUT, "MAX_OBJECT_BYTES": "123", "ANONYMIZER_FACE_EFFECT": "fill"})
    assert config.max_object_bytes == 123 and config.defaults.face.effect == "fill"
    assert FlowConfig.from_env({"OUTPUT_BUCKET": OUT}).max_object_bytes == 50 * 1024 * 1024
    with pytest.raises(ConfigurationError):
        FlowConfig.from_env({})
