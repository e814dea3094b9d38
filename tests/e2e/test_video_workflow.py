"""The video state machine, walked locally from its own definition against moto's S3: plan,
segments side by side, join; and every way it can fail publishes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from video_clips import PHONE_TAGS, coco_objects, count_frames, pan_zoom, stream_packets, write_clip

from anonymizer.options import Options
from anonymizer.pipeline import Anonymizer
from anonymizer.video import io, steps
from anonymizer.video.pipeline import VideoSettings
from anonymizer.video.tracking import TrackSettings
from anonymizer_local import state_machine as local_run

pytest.importorskip("av")
IN, OUT, WORK = "video-in", "video-out", "video-work"
KEY = "trips/day 1/clip.mov"


@pytest.fixture(scope="module")
def clip(shared_data: Path, tmp_path_factory) -> Path:
    image, objects = coco_objects(shared_data / "faces" / "street-masks-dev", "images/maksssksksss787.jpg")
    h, w = image.shape[:2]
    frames, _ = pan_zoom(
        image, objects, frames=32, size=(320, 224), start=(w * 0.4, h / 2, w * 0.7), end=(w * 0.6, h / 2, w * 0.5)
    )
    return write_clip(tmp_path_factory.mktemp("wf") / "clip.mov", frames, tags=PHONE_TAGS, gop=8)


@pytest.fixture(scope="module")
def anonymizer() -> Anonymizer:
    return Anonymizer()


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        for bucket in (IN, OUT, WORK):
            client.create_bucket(Bucket=bucket)
        yield client


CONFIG = steps.VideoFlowConfig(
    output_bucket=OUT,
    work_bucket=WORK,
    defaults=Options(targets=("face",)),
    settings=VideoSettings(detect_every=2, tracks=TrackSettings(max_gap=5, pad=4)),  # 9 frames of context per side
    segment_seconds=0.64,  # 32 frames at 25 fps: two parts of 16 frames
    single_seconds=1.0,
)


def _start(s3, clip: Path, **put) -> dict:
    s3.upload_file(str(clip), IN, KEY, ExtraArgs=put or None)
    head = s3.head_object(Bucket=IN, Key=KEY)
    return steps.execution_input(IN, KEY, None, head["ETag"].strip('"'), head["ContentLength"])


def _invoke(s3, anonymizer, fail_segment: int | None = None):
    calls: list[str] = []

    def invoke(payload: dict) -> dict:
        calls.append(payload["step"])
        if payload["step"] == "segment" and payload["segment"]["index"] == fail_segment:
            raise RuntimeError("Lambda timed out")
        return steps.run_step(payload, s3, CONFIG, lambda: anonymizer)

    return invoke, calls


def test_whole_workflow_publishes_one_joined_video(s3, clip, anonymizer, tmp_path: Path) -> None:
    invoke, calls = _invoke(s3, anonymizer)
    states: list[str] = []
    out = local_run.run(local_run.load_definition(), _start(s3, clip), invoke, workers=2, trace=states.append)
    assert states[0] == "Plan" and states[-1] == "Done" and states.count("Segment") == 2
    assert calls.count("segment") == 2 and calls[-1] == "join"
    assert out["result"]["result"]["frames"] == 32 and out["result"]["result"]["parts"] == 2
    got = tmp_path / "got.mp4"
    s3.download_file(OUT, KEY, str(got))
    assert count_frames(got) == count_frames(clip)
    assert stream_packets(got, "audio") == stream_packets(clip, "audio")
    assert not any(w in " ".join(io.container_tags(got)).lower() for w in ("location", "make", "model", "creation"))
    report = json.loads(s3.get_object(Bucket=OUT, Key=KEY + ".report.json")["Body"].read())
    assert report["status"] == "ok" and report["video"]["frames"] == 32 and report["counts"]["face"] >= 5
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=OUT, Key=KEY)["TagSet"]}
    assert tags["anonymizer-status"] == "ok"
    assert s3.list_objects_v2(Bucket=WORK).get("KeyCount", 0) == 0  # work objects cleaned up
    assert s3.head_object(Bucket=IN, Key=KEY)["ContentLength"] == clip.stat().st_size  # original untouched


def test_a_failed_segment_publishes_nothing(s3, clip, anonymizer) -> None:
    invoke, calls = _invoke(s3, anonymizer, fail_segment=0)
    with pytest.raises(local_run.StateMachineFailed, match="VideoFailed"):
        local_run.run(local_run.load_definition(), _start(s3, clip), invoke, workers=1)
    assert calls == ["plan", "segment", "fail"]  # the Map stops launching segments at the first failure
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=OUT).get("Contents", [])]
    assert keys == [KEY + ".report.json"]  # the failure report only
    report = json.loads(s3.get_object(Bucket=OUT, Key=KEY + ".report.json")["Body"].read())
    assert report["status"] == "failed" and "timed out" in report["message"]
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=IN, Key=KEY)["TagSet"]}
    assert tags["anonymizer-status"] == "failed"
    assert s3.list_objects_v2(Bucket=WORK).get("KeyCount", 0) == 0


def test_not_a_video_fails_at_plan(s3, anonymizer) -> None:
    s3.put_object(Bucket=IN, Key=KEY, Body=b"\x00\x00\x00\x18ftypisom" + bytes(300))
    head = s3.head_object(Bucket=IN, Key=KEY)
    invoke, calls = _invoke(s3, anonymizer)
    with pytest.raises(local_run.StateMachineFailed):
        local_run.run(local_run.load_definition(), steps.execution_input(IN, KEY, None, head["ETag"], 300), invoke)
    assert calls == ["plan", "fail"]
    report = json.loads(s3.get_object(Bucket=OUT, Key=KEY + ".report.json")["Body"].read())
    assert report["error"] == "invalid_video"


def test_bad_video_option_fails_closed(s3, clip, anonymizer) -> None:
    invoke, calls = _invoke(s3, anonymizer)
    with pytest.raises(local_run.StateMachineFailed):
        local_run.run(local_run.load_definition(), _start(s3, clip, Metadata={"anonymize-audio": "louder"}), invoke)
    assert calls == ["plan", "fail"]
    report = json.loads(s3.get_object(Bucket=OUT, Key=KEY + ".report.json")["Body"].read())
    assert report["error"] == "invalid_options"


def test_video_options_from_object_metadata(s3, clip, anonymizer, tmp_path: Path) -> None:
    invoke, _ = _invoke(s3, anonymizer)
    metadata = {"anonymize-audio": "drop", "anonymize-detect_every": "4"}
    out = local_run.run(local_run.load_definition(), _start(s3, clip, Metadata=metadata), invoke)
    assert out["result"]["result"]["counts"]["face"] >= 5
    got = tmp_path / "got.mp4"
    s3.download_file(OUT, KEY, str(got))
    assert stream_packets(got, "audio") == [] and count_frames(got)[0] == 32


def test_job_id_is_idempotent() -> None:
    a = steps.execution_input(IN, KEY, None, "e1", 5)
    assert a == steps.execution_input(IN, KEY, None, "e1", 5)
    assert a["job_id"] != steps.execution_input(IN, KEY, None, "e2", 5)["job_id"]
