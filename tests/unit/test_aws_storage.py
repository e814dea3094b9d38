"""S3 adapter: size check before download, writes, tags, presigned URLs, options from metadata."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from urllib.parse import urlsplit

import boto3
import pytest
import requests
from moto import mock_aws

from anonymizer.aws.storage import (
    ObjectChangedError,
    ObjectNotFoundError,
    S3Storage,
    object_option_values,
    option_key,
    option_metadata,
    tag_value,
)
from anonymizer.errors import ImageTooLargeError
from anonymizer.options import parse_options


@pytest.fixture
def s3(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="in-bucket")
        yield client


def test_option_keys_from_metadata_and_tags():
    metadata = {
        "anonymize-targets": "face",
        "anonymize-face-effect": "pixelate",
        "anonymize-plate.effect": "fill",
        "anonymize-face_min_size": "24",
        "camera": "front",  # someone else's metadata: ignored
    }
    tags = {"anonymize-face-effect": "blur", "project": "x"}
    values = object_option_values(metadata, tags)
    assert values == {
        "targets": "face",
        "face.effect": "blur",  # tags win over metadata
        "plate.effect": "fill",
        "face.min_size": "24",
    }
    options = parse_options(values)
    assert options.targets == ("face",) and options.face.effect == "blur" and options.plate.effect == "fill"


def test_option_metadata_round_trips():
    values = {"face.effect": "pixelate", "targets": "face,plate", "blocks": "12", "face.min_size": "20"}
    metadata = option_metadata(values)
    assert metadata["anonymize-face-effect"] == "pixelate"
    assert metadata["anonymize-face-min-size"] == "20"
    assert object_option_values(metadata) == values
    assert option_key("max-pixels") == "max_pixels"


def test_tag_values_are_sanitised():
    assert tag_value("face=centerface;v1.5 (int8)") == "face=centerface_v1.5 _int8_"
    assert len(tag_value("x" * 1000)) == 256


def test_read_checks_size_before_download(s3, monkeypatch):
    s3.put_object(Bucket="in-bucket", Key="big.jpg", Body=b"x" * 2000)
    storage = S3Storage(s3, max_object_bytes=1000)

    def no_download(**kwargs):
        raise AssertionError("downloaded an object over the limit")

    monkeypatch.setattr(storage.client, "get_object", no_download)
    with pytest.raises(ImageTooLargeError, match="2000 bytes"):
        storage.read("in-bucket", "big.jpg")


def test_read_returns_bytes_and_facts(s3):
    s3.put_object(
        Bucket="in-bucket",
        Key="a/ü b.jpg",
        Body=b"abc",
        ContentType="image/jpeg",
        Metadata={"Anonymize-Targets": "face"},
    )
    obj = S3Storage(s3).read("in-bucket", "a/ü b.jpg")
    assert obj.data == b"abc"
    assert obj.info.size == 3 and obj.info.content_type == "image/jpeg"
    assert obj.info.metadata == {"anonymize-targets": "face"}
    assert obj.info.etag and '"' not in obj.info.etag


def test_read_missing_and_overwritten(s3):
    storage = S3Storage(s3)
    with pytest.raises(ObjectNotFoundError):
        storage.read("in-bucket", "nope.jpg")
    s3.put_object(Bucket="in-bucket", Key="k.jpg", Body=b"new content")
    with pytest.raises(ObjectChangedError):
        storage.read("in-bucket", "k.jpg", etag="0123456789abcdef0123456789abcdef")
    assert storage.head("in-bucket", "nope.jpg") is None


def test_read_versioned_object(s3):
    s3.put_bucket_versioning(Bucket="in-bucket", VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket="in-bucket", Key="v.jpg", Body=b"first")["VersionId"]
    v2 = s3.put_object(Bucket="in-bucket", Key="v.jpg", Body=b"third")["VersionId"]
    obj = S3Storage(s3).read("in-bucket", "v.jpg", version_id=v2)
    assert obj.data == b"third" and obj.info.version_id == v2
    with pytest.raises(ObjectChangedError):  # an older version never overwrites a newer result
        S3Storage(s3).read("in-bucket", "v.jpg", version_id=v1)


def test_put_with_content_type_metadata_and_tags(s3):
    storage = S3Storage(s3)
    storage.put(
        "in-bucket",
        "../x.jpg",
        b"img",
        content_type="image/png",
        metadata={"anonymizer-faces": "2"},
        tags={"anonymizer-status": "ok", "anonymizer-model": "face=v1;bad"},
    )
    head = s3.head_object(Bucket="in-bucket", Key="../x.jpg")
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {"anonymizer-faces": "2"}
    assert storage.get_tags("in-bucket", "../x.jpg") == {"anonymizer-status": "ok", "anonymizer-model": "face=v1_bad"}
    storage.add_tags("in-bucket", "../x.jpg", {"extra": "1"})
    assert storage.get_tags("in-bucket", "../x.jpg")["anonymizer-status"] == "ok"
    assert storage.read_json("in-bucket", "missing.json") is None


def test_presigned_post_holds_the_size_limit_and_pins_the_metadata(s3):
    """Regression: a presigned PUT let any size land (the limit held only after the upload);
    the POST policy carries content-length-range and pins every signed field."""
    storage = S3Storage()  # its own client: SigV4, as in Lambda
    url, fields = storage.presign_post(
        "in-bucket", "uploads/abc", max_bytes=1234, expires=60, metadata={"anonymize-targets": "face"}
    )
    assert urlsplit(url).netloc.startswith("in-bucket.") or urlsplit(url).path.startswith("/in-bucket")
    assert fields["key"] == "uploads/abc" and fields["x-amz-meta-anonymize-targets"] == "face"
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256" and fields["x-amz-signature"]
    policy = json.loads(base64.b64decode(fields["policy"]))
    conditions = policy["conditions"]
    assert ["content-length-range", 1, 1234] in conditions
    assert {"x-amz-meta-anonymize-targets": "face"} in conditions and {"key": "uploads/abc"} in conditions
    assert {"bucket": "in-bucket"} in conditions
    expires = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert 0 < (expires - datetime.now(UTC)).total_seconds() <= 61


def test_presigned_post_uploads_to_s3_with_its_metadata(s3):
    storage = S3Storage(s3)
    url, fields = storage.presign_post(
        "in-bucket", "uploads/f", max_bytes=100, metadata={"anonymize-effect": "fill", "anonymizer-owner": "o1"}
    )
    req = requests.Request("POST", url, data=fields, files={"file": ("f.jpg", b"12345")}).prepare()
    session = requests.Session()
    assert session.send(req).status_code in (200, 201, 204)
    head = s3.head_object(Bucket="in-bucket", Key="uploads/f")
    assert head["ContentLength"] == 5
    assert head["Metadata"] == {"anonymize-effect": "fill", "anonymizer-owner": "o1"}


def test_delete_a_version_for_good(s3):
    s3.put_bucket_versioning(Bucket="in-bucket", VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket="in-bucket", Key="v.jpg", Body=b"1")["VersionId"]
    s3.put_object(Bucket="in-bucket", Key="v.jpg", Body=b"2")
    S3Storage(s3).delete("in-bucket", "v.jpg", version_id=first)
    versions = s3.list_object_versions(Bucket="in-bucket")["Versions"]
    assert [v["VersionId"] for v in versions] != [] and first not in [v["VersionId"] for v in versions]
    assert s3.get_object(Bucket="in-bucket", Key="v.jpg")["Body"].read() == b"2"


def test_presigned_get(s3):
    storage = S3Storage()
    get_url = storage.presign_get("in-bucket", "uploads/abc", content_type="image/jpeg")
    assert "response-content-type=image%2Fjpeg" in get_url
