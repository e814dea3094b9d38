"""A video through the presigned upload flow, in-process on moto: POST /uploads?kind=video, the
form upload, the S3 flow routing it to the state machine, the state machine walked locally from
its own definition, and GET /results/{id} through the API handler between the steps."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import numpy as np
import pytest
import requests
from lambda_env import mock_lambda_env
from video_clips import count_frames, write_clip

from anonymizer.aws.s3_flow import FlowConfig, ObjectRef, process_object
from anonymizer.aws.storage import S3Storage
from anonymizer.options import Options
from anonymizer.video import steps
from anonymizer.video.pipeline import VideoSettings
from anonymizer.video.tracking import TrackSettings
from anonymizer_local import state_machine as local_run
from anonymizer_local.emulator import FakeLambdaContext, api_event, load_function

pytest.importorskip("av")
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]
IN, OUT, WORK = "vp-in", "vp-out", "vp-work"
CONFIG = steps.VideoFlowConfig(
    output_bucket=OUT,
    work_bucket=WORK,
    defaults=Options(targets=("face",)),
    settings=VideoSettings(detect_every=2, tracks=TrackSettings(max_gap=5, pad=4)),
    segment_seconds=0.64,  # 48 frames at 25 fps, keyframe every 8: three parts of 16 frames
    single_seconds=1.0,
)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """48 frames of a bright square moving over a gradient (no face: progress is what counts)."""
    frames = []
    for i in range(48):
        frame = np.tile(np.linspace(40, 200, 160, dtype=np.uint8)[None, :, None], (96, 1, 3))
        frame[30:60, 10 + 2 * i : 40 + 2 * i] = 255
        frames.append(frame)
    return write_clip(tmp_path_factory.mktemp("vp") / "clip.mov", frames, gop=8)


@pytest.fixture
def aws():
    with mock_lambda_env(OUTPUT_BUCKET=OUT, UPLOAD_BUCKET=IN, VIDEO_WORK_BUCKET=WORK, ANONYMIZER_TARGETS="face"):
        s3 = boto3.client("s3")
        for bucket in (IN, OUT, WORK):
            s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=IN, VersioningConfiguration={"Status": "Enabled"})  # as deployed
        sfn = boto3.client("stepfunctions")
        definition = json.dumps({"StartAt": "A", "States": {"A": {"Type": "Succeed"}}})  # walked locally below
        arn = sfn.create_state_machine(
            name="vp-video", definition=definition, roleArn="arn:aws:iam::123456789012:role/video"
        )
        yield s3, sfn, arn["stateMachineArn"], load_function("api_anonymize").lambda_handler


def _call(api, method: str, path: str, **kw) -> tuple[int, dict]:
    event = api_event(method, path, **kw)
    event["requestContext"]["identity"]["apiKeyId"] = "key-a"
    response = api(event, FakeLambdaContext())
    return response["statusCode"], json.loads(response["body"])


def _route(s3, sfn, arn: str, key: str) -> dict:
    """What the S3 function does with the upload's event: start the video execution."""
    head = s3.head_object(Bucket=IN, Key=key)
    ref = ObjectRef(IN, key, head.get("VersionId"), head["ETag"].strip('"'), head["ContentLength"])
    config = FlowConfig(output_bucket=OUT, video_state_machine=arn)
    summary = process_object(ref, storage=S3Storage(s3), anonymizer=None, config=config)
    assert summary["status"] == "video_started"
    return json.loads(sfn.describe_execution(executionArn=summary["execution"])["input"])


def test_video_upload_shows_progress_then_the_link(aws, clip: Path, tmp_path: Path, monkeypatch) -> None:
    from anonymizer.pipeline import Anonymizer

    s3, sfn, arn, api = aws
    status, ticket = _call(api, "POST", "/uploads", query={"kind": ["video"], "audio": ["drop"]})
    assert status == 201 and ticket["kind"] == "video" and ticket["upload"]["fields"]["key"].endswith(".mp4")
    upload_id = ticket["id"]
    with clip.open("rb") as fh:
        sent = requests.post(ticket["upload"]["url"], data=ticket["upload"]["fields"], files={"file": ("c", fh)})
    assert sent.status_code in (200, 201, 204), sent.text

    polls: list[tuple[str, int, dict]] = []

    def poll(when: str) -> dict:
        status, body = _call(api, "GET", f"/results/{upload_id}")
        polls.append((when, status, body))
        return body

    assert poll("uploaded")["progress"] == {"phase": "queued"}
    monkeypatch.setattr(boto3, "client", lambda name, **kw: sfn)  # start_video's client: the mocked one
    data = _route(s3, sfn, arn, ticket["upload"]["fields"]["key"])
    monkeypatch.undo()

    anonymizer = Anonymizer()

    def invoke(payload: dict) -> dict:
        if payload["step"] == "join":
            poll("before join")
        result = steps.run_step(payload, s3, CONFIG, lambda: anonymizer)
        poll(f"after {payload['step']}")
        return result

    out = local_run.run(local_run.load_definition(), data, invoke, workers=1)
    assert out["result"]["result"]["parts"] == 3

    by_when = {when: (status, body) for when, status, body in polls}
    assert [s for _, s, _ in polls[:-1]] == [202] * (len(polls) - 1)
    planned = by_when["after plan"][1]
    assert planned["progress"]["phase"] == "segments"
    assert planned["progress"]["segments"] == {"total": 3, "done": 0, "running": 0}
    assert planned["progress"]["frames"] == {"total": 48, "done": 0}
    segment_polls = [body["progress"] for when, _, body in polls if when == "after segment"]
    assert [p["segments"]["done"] for p in segment_polls[:2]] == [1, 2]
    assert [p["frames"]["done"] for p in segment_polls[:2]] == [16, 32]
    assert by_when["before join"][1]["progress"]["frames"] == {"total": 48, "done": 48}
    percents = [body["percent"] for _, status, body in polls if status == 202]
    assert percents == sorted(percents) and percents[0] == 0 and percents[-1] < 100 and len(set(percents)) >= 4

    status, done = polls[-1][1], polls[-1][2]  # after join
    assert status == 200 and done["status"] == "done" and "progress" not in done
    assert done["report"]["status"] == "ok" and done["report"]["video"]["frames"] == 48
    assert done["report"]["audio"] == "drop"  # the upload's signed video option reached the job
    assert "segments" not in done["report"] and "counts" in done["report"]  # per-track lists: behind report_url
    whole = requests.get(done["report_url"]).json()
    assert len(whole["segments"]) == 3 and whole["counts"] == done["report"]["counts"]
    got = tmp_path / "got.mp4"
    got.write_bytes(requests.get(done["video"]["url"]).content)
    assert done["video"]["content_type"] == "video/mp4" and count_frames(got)[0] == 48
    assert s3.list_objects_v2(Bucket=WORK).get("KeyCount", 0) == 0  # progress went with the work objects

    other = api_event("GET", f"/results/{upload_id}")
    other["requestContext"]["identity"]["apiKeyId"] = "key-b"
    assert api(other, FakeLambdaContext())["statusCode"] == 404  # bound to the uploader, like images


def test_failed_video_is_422_with_the_reason(aws) -> None:
    s3, sfn, arn, api = aws
    status, ticket = _call(api, "POST", "/uploads", query={"kind": ["video"]})
    fields = ticket["upload"]["fields"]
    sent = requests.post(ticket["upload"]["url"], data=fields, files={"file": ("c", b"not a video at all")})
    assert sent.status_code in (200, 201, 204)
    head = s3.head_object(Bucket=IN, Key=fields["key"])
    data = steps.execution_input(IN, fields["key"], head.get("VersionId"), head["ETag"].strip('"'), 18)

    def invoke(payload: dict) -> dict:
        return steps.run_step(payload, s3, CONFIG, lambda: None)

    with pytest.raises(local_run.StateMachineFailed):
        local_run.run(local_run.load_definition(), data, invoke)
    status, body = _call(api, "GET", f"/results/{ticket['id']}")
    assert status == 422 and body["status"] == "failed" and body["error"] == "invalid_video"


def test_video_uploads_check_their_options_early(aws) -> None:
    _, _, _, api = aws
    status, body = _call(api, "POST", "/uploads", query={"kind": ["video"], "audio": ["louder"]})
    assert status == 400 and body["error"] == "invalid_options"
    assert _call(api, "POST", "/uploads", query={"kind": ["film"]})[0] == 400
    assert _call(api, "POST", "/uploads", query={"audio": ["drop"]})[0] == 400  # an image has no audio
