"""The S3 flow sends video keys to the video state machine, once per object version."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from anonymizer.aws.s3_flow import FlowConfig, ObjectRef, process_object
from anonymizer.aws.storage import S3Storage
from anonymizer.video import steps


@pytest.fixture
def aws():
    with mock_aws():
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        iam_role = "arn:aws:iam::123456789012:role/video"
        definition = json.dumps({"StartAt": "A", "States": {"A": {"Type": "Succeed"}}})
        arn = sfn.create_state_machine(name="stack-video", definition=definition, roleArn=iam_role)["stateMachineArn"]
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="video-in")
        s3.create_bucket(Bucket="video-out")
        yield sfn, s3, arn


class _NoImages:
    def anonymize(self, data, options):  # pragma: no cover - must not be reached for a video
        raise AssertionError("a video went down the image path")


@pytest.mark.parametrize("key", ["a/clip.MP4", "b/phone.mov", "c/x.mkv", "d/y.webm", "e/z.avi", "f/w.m4v"])
def test_video_keys(key: str) -> None:
    assert steps.is_video_key(key)


@pytest.mark.parametrize("key", ["a.jpg", "mp4", "clip.mp4.jpg", "x.heic"])
def test_image_keys(key: str) -> None:
    assert not steps.is_video_key(key)


def test_a_video_starts_one_execution_per_object_version(aws, monkeypatch) -> None:
    sfn, s3, arn = aws
    monkeypatch.setattr(boto3, "client", lambda name, **kw: sfn)  # start_video's client: the mocked one
    config = FlowConfig(output_bucket="video-out", video_state_machine=arn)
    ref = ObjectRef("video-in", "trips/clip.mov", None, "etag1", 10_000_000_000)  # far over the image limit
    first = process_object(ref, storage=S3Storage(s3), anonymizer=_NoImages(), config=config)
    assert first["status"] == "video_started"
    (execution,) = sfn.list_executions(stateMachineArn=arn)["executions"]
    assert execution["name"] == first["job_id"]
    data = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert data["source"] == {
        "bucket": "video-in",
        "key": "trips/clip.mov",
        "version_id": None,
        "etag": "etag1",
        "size": 10_000_000_000,
    }
    again = process_object(ref, storage=S3Storage(s3), anonymizer=_NoImages(), config=config)
    # Step Functions: the same name and input while running answers the same execution; once closed,
    # ExecutionAlreadyExists (skipped). Either way no second execution.
    assert again.get("execution", first["execution"]) == first["execution"]
    assert len(sfn.list_executions(stateMachineArn=arn)["executions"]) == 1
    assert s3.list_objects_v2(Bucket="video-out").get("KeyCount", 0) == 0  # nothing published by the router


def test_without_a_state_machine_videos_stay_on_the_image_path() -> None:
    assert FlowConfig.from_env({"OUTPUT_BUCKET": "o"}).video_state_machine == ""
    assert (
        FlowConfig.from_env({"OUTPUT_BUCKET": "o", "VIDEO_STATE_MACHINE_ARN": "arn:x"}).video_state_machine == "arn:x"
    )


def test_a_closed_execution_of_the_same_object_is_not_started_again() -> None:
    class Closed(Exception):
        pass

    class FakeSfn:
        class exceptions:  # noqa: N801 - boto3's spelling
            ExecutionAlreadyExists = Closed

        def start_execution(self, **kwargs):
            raise Closed("Execution Already Exists")

    out = steps.start_video("arn:sm", "b", "k.mp4", None, "e", 5, sfn=FakeSfn())
    assert out["status"] == "skipped" and out["job_id"] == steps.job_id({"bucket": "b", "key": "k.mp4", "etag": "e"})
