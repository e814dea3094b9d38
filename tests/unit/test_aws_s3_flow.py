"""S3 flow: events -> object refs (key decoding), process one object, fail closed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import boto3
import pytest
from aws_fakes import FakeAnonymizer, make_jpeg
from moto import mock_aws

from anonymizer.aws import s3_flow
from anonymizer.aws.s3_flow import ConfigurationError, FlowConfig, ObjectRef, process_object
from anonymizer.aws.storage import S3Storage
from anonymizer.errors import DetectionError
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


def _tags(s3, bucket, key):
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


def _failure_report(s3, key):
    return json.loads(s3.get_object(Bucket=OUT, Key=key + ".report.json")["Body"].read())


def assert_failed_once(s3, summary, key, code, words):
    """A permanent failure: status failed (no raise: no retry), no image, ONE failure report with
    the full message, and codes only in the tags."""
    assert summary["status"] == "failed" and summary["error"] == code
    assert _output_keys(s3) == [key + ".report.json"]  # the report only, never an image
    report = _failure_report(s3, key)
    assert report["status"] == "failed" and report["error"] == code and words in report["message"]
    assert _tags(s3, OUT, key + ".report.json") == {"anonymizer-status": "failed", "anonymizer-error": code}
    tags = _tags(s3, IN, key)
    assert tags["anonymizer-status"] == "failed" and tags["anonymizer-error"] == code
    assert "anonymizer-message" not in tags  # tag values garbled messages: codes only


def test_corrupt_object_fails_once_and_publishes_nothing(s3):
    ref = _put(s3, "bad.jpg", b"\xff\xd8\xff" + b"garbage" * 10)
    summary = process_object(ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=CONFIG)
    assert_failed_once(s3, summary, "bad.jpg", "invalid_image", "corrupt image")


def test_detector_crash_is_transient_raises_and_records_nothing(s3):
    ref = _put(s3, "ok.jpg", make_jpeg(), Tagging="owner=me")
    with pytest.raises(RuntimeError):
        process_object(
            ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(fail_with=RuntimeError("onnx")), config=CONFIG
        )
    with pytest.raises(DetectionError):  # a 5xx-like AnonymizerError is retried too
        process_object(
            ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(fail_with=DetectionError("x")), config=CONFIG
        )
    assert _output_keys(s3) == []
    assert s3.get_object_tagging(Bucket=IN, Key="ok.jpg")["TagSet"] == [{"Key": "owner", "Value": "me"}]


def test_failure_tags_keep_existing_tags(s3):
    ref = _put(s3, "bad.jpg", b"nope", Tagging="owner=me&anonymize-targets=face")
    process_object(ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=CONFIG)
    tags = _tags(s3, IN, "bad.jpg")
    assert tags["owner"] == "me" and tags["anonymize-targets"] == "face" and tags["anonymizer-status"] == "failed"


def test_too_large_message_is_whole_in_the_report_not_garbled_in_tags(s3):
    """Regression: the message used to go into a tag, where ':' and ';' became '_' ("bytes_ the limit is")."""
    ref = ObjectRef(bucket=IN, key="huge.jpg", etag="abc", size=CONFIG.max_object_bytes + 1)
    s3.put_object(Bucket=IN, Key="huge.jpg", Body=b"x")  # so that there is an input to tag
    summary = process_object(ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=CONFIG)
    message = _failure_report(s3, "huge.jpg")["message"]
    assert message == f"object is {ref.size} bytes; the limit is 100000 bytes (MAX_OBJECT_BYTES)"
    assert summary["message"] == message and "_ the limit" not in json.dumps(_tags(s3, IN, "huge.jpg"))


def test_too_large_by_event_size_is_rejected_without_any_read(s3, monkeypatch):
    ref = ObjectRef(bucket=IN, key="huge.jpg", etag="abc", size=CONFIG.max_object_bytes + 1)
    storage = S3Storage(s3)
    monkeypatch.setattr(storage, "read", lambda *a, **k: pytest.fail("read an object over the limit"))
    summary = process_object(ref, storage=storage, anonymizer=FakeAnonymizer(), config=CONFIG)
    assert summary["status"] == "failed" and summary["error"] == "image_too_large"
    assert _output_keys(s3) == ["huge.jpg.report.json"]


def test_too_large_by_head_is_rejected_before_download(s3, monkeypatch):
    ref = _put(s3, "big.jpg", b"x" * (CONFIG.max_object_bytes + 5))
    ref = ObjectRef(bucket=IN, key=ref.key, etag=ref.etag, size=None)  # the event did not say
    storage = S3Storage(s3)
    monkeypatch.setattr(storage.client, "get_object", lambda **k: pytest.fail("downloaded"))
    fake = FakeAnonymizer()
    summary = process_object(ref, storage=storage, anonymizer=fake, config=CONFIG)
    monkeypatch.undo()  # reading the report back is the test's own download
    assert fake.calls == []
    assert_failed_once(s3, summary, "big.jpg", "image_too_large", "the limit is 100000 bytes")


def test_deployment_only_option_is_refused(s3):
    ref = _put(s3, "m.jpg", make_jpeg(), Metadata={"anonymize-max-pixels": "999999999"})
    summary = process_object(ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=CONFIG)
    assert_failed_once(s3, summary, "m.jpg", "invalid_options", "ANONYMIZER_MAX_PIXELS")


def test_unknown_object_option_is_refused(s3):
    ref = _put(s3, "u.jpg", make_jpeg(), Metadata={"anonymize-sparkle": "yes"})
    summary = process_object(ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=CONFIG)
    assert_failed_once(s3, summary, "u.jpg", "invalid_options", "unknown option")


def test_logo_effect_is_refused_with_a_message_that_says_where_it_works(s3):
    """Regression: effect=logo was accepted by the parser's table but could never get a logo here."""
    ref = _put(s3, "l.jpg", make_jpeg(), Metadata={"anonymize-effect": "logo"})
    fake = FakeAnonymizer()
    summary = process_object(ref, storage=S3Storage(s3), anonymizer=fake, config=CONFIG)
    assert fake.calls == []
    assert_failed_once(s3, summary, "l.jpg", "invalid_options", "only the CLI and the library")


def test_output_carries_no_source_etag(s3):
    """Regression: the original's ETag (its MD5) was copied into the output's metadata."""
    body = make_jpeg(seed=4)
    ref = _put(s3, "e.jpg", body)
    process_object(ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=CONFIG)
    md5 = hashlib.md5(body).hexdigest()  # noqa: S324 - what S3's ETag is for a single-part upload
    head = s3.head_object(Bucket=OUT, Key="e.jpg")
    assert md5 not in json.dumps(head["Metadata"]) and "anonymizer-source-etag" not in head["Metadata"]
    assert md5 not in s3.get_object(Bucket=OUT, Key="e.jpg.report.json")["Body"].read().decode()


def test_owner_metadata_travels_into_the_report_not_into_options(s3):
    ref = _put(s3, "w.jpg", make_jpeg(), Metadata={"anonymizer-owner": "abc123"})
    fake = FakeAnonymizer()
    process_object(ref, storage=S3Storage(s3), anonymizer=fake, config=CONFIG)
    report = _failure_report(s3, "w.jpg")
    assert report["owner"] == "abc123" and report["options"] == {}


@pytest.fixture
def versioned(s3):
    s3.put_bucket_versioning(Bucket=IN, VersioningConfiguration={"Status": "Enabled"})
    return s3


def _put_versioned(s3, key, body):
    resp = s3.put_object(Bucket=IN, Key=key, Body=body)
    return ObjectRef(bucket=IN, key=key, version_id=resp["VersionId"], etag=resp["ETag"].strip('"'), size=len(body))


def test_delete_original_removes_that_version_for_good_after_publication(versioned):
    s3 = versioned
    ref = _put_versioned(s3, "d.jpg", make_jpeg())
    config = FlowConfig(output_bucket=OUT, defaults=CONFIG.defaults, max_object_bytes=100_000, delete_original=True)
    summary = process_object(ref, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=config)
    assert summary["status"] == "ok" and summary["original_deleted"] is True
    assert _output_keys(s3) == ["d.jpg", "d.jpg.report.json"]
    listing = s3.list_object_versions(Bucket=IN)
    assert listing.get("Versions", []) == [] and listing.get("DeleteMarkers", []) == []  # gone, not hidden


def test_delete_original_keeps_failed_inputs_and_the_default_keeps_all(versioned):
    s3 = versioned
    bad = _put_versioned(s3, "bad.jpg", b"nope")
    good = _put_versioned(s3, "good.jpg", make_jpeg())
    deleting = FlowConfig(output_bucket=OUT, defaults=CONFIG.defaults, delete_original=True)
    assert process_object(bad, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=deleting)["status"] == (
        "failed"
    )
    summary = process_object(good, storage=S3Storage(s3), anonymizer=FakeAnonymizer(), config=CONFIG)
    assert summary["original_deleted"] is False
    assert sorted(v["Key"] for v in s3.list_object_versions(Bucket=IN)["Versions"]) == ["bad.jpg", "good.jpg"]


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
    assert config.delete_original is False
    assert FlowConfig.from_env({"OUTPUT_BUCKET": OUT}).max_object_bytes == 50 * 1024 * 1024
    assert FlowConfig.from_env({"OUTPUT_BUCKET": OUT, "DELETE_ORIGINAL": "true"}).delete_original is True
    with pytest.raises(ConfigurationError):
        FlowConfig.from_env({})
    with pytest.raises(ConfigurationError, match="DELETE_ORIGINAL"):
        FlowConfig.from_env({"OUTPUT_BUCKET": OUT, "DELETE_ORIGINAL": "yes"})
