"""Video progress records (anonymizer.video.progress), the API's reading of them, and the grant
that lets the API function read them and nothing else of the work bucket."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from moto import mock_aws
from test_template import ROOT, as_list, props, tpl  # noqa: F401 - fixture

from anonymizer.aws import api_flow
from anonymizer.aws.storage import ObjectInfo, S3Storage
from anonymizer.errors import InvalidOptionsError, UnsupportedVideoError
from anonymizer.video import progress
from anonymizer.video.start import job_id

WORK = "work"
JOB = "a" * 32


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=WORK)
        yield client


def test_nothing_written_reads_as_none_and_queued_is_zero(s3) -> None:
    assert progress.read(s3, WORK, JOB) is None
    assert progress.percent(progress.queued()) == 0 and progress.percent(None) == 0


def test_progress_moves_through_the_phases(s3) -> None:
    seen = []
    progress.planning(s3, WORK, JOB)
    seen.append(progress.read(s3, WORK, JOB))
    assert seen[-1]["phase"] == "planning" and "segments" not in seen[-1]
    progress.planned(s3, WORK, JOB, frames=100, segment_frames=[40, 40, 20])
    seen.append(progress.read(s3, WORK, JOB))
    assert seen[-1]["segments"] == {"total": 3, "done": 0, "running": 0}
    assert seen[-1]["frames"] == {"total": 100, "done": 0}
    progress.segment_started(s3, WORK, JOB, 2)
    progress.segment_started(s3, WORK, JOB, 0)
    seen.append(progress.read(s3, WORK, JOB))
    assert seen[-1]["segments"]["running"] == 2
    progress.segment_done(s3, WORK, JOB, 2, 20)
    seen.append(progress.read(s3, WORK, JOB))
    assert seen[-1]["segments"] == {"total": 3, "done": 1, "running": 1}
    assert seen[-1]["frames"] == {"total": 100, "done": 20}  # the segment's own frames, from the plan
    progress.joining(s3, WORK, JOB)
    seen.append(progress.read(s3, WORK, JOB))
    assert seen[-1]["phase"] == "joining" and seen[-1]["frames"]["done"] == 100
    percents = [progress.percent(p) for p in seen]
    assert percents == sorted(percents) and percents[0] < percents[3] < percents[-1] < 100
    assert seen[-1]["started_at"] == seen[0]["started_at"] and seen[-1]["updated_at"] >= seen[0]["started_at"]


def test_parallel_segments_lose_no_update(s3) -> None:
    """Every segment writes its own record: 40 of them at once, all counted."""
    sizes = [10] * 40
    progress.planned(s3, WORK, JOB, frames=sum(sizes), segment_frames=sizes)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: progress.segment_done(s3, WORK, JOB, i, 10), range(40)))
    got = progress.read(s3, WORK, JOB)
    assert got["segments"]["done"] == 40 and got["frames"]["done"] == 400


def test_reader_pages_through_many_segment_records(s3) -> None:
    sizes = [1] * 1100  # two LIST pages of segment records
    progress.planned(s3, WORK, JOB, frames=len(sizes), segment_frames=sizes)
    for i in range(1100):
        s3.put_object(Bucket=WORK, Key=f"{progress.prefix(JOB)}seg-{i:05d}.done", Body=b"{}")
    assert progress.read(s3, WORK, JOB)["frames"]["done"] == 1100


def test_records_hold_counts_and_times_only(s3) -> None:
    progress.planning(s3, WORK, JOB)
    progress.planned(s3, WORK, JOB, frames=10, segment_frames=[10])
    progress.segment_started(s3, WORK, JOB, 0)
    progress.segment_done(s3, WORK, JOB, 0, 10)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=WORK)["Contents"]]
    assert all(k.startswith(f"jobs/{JOB}/progress/") for k in keys)  # deleted with the job's work objects
    for key in keys:
        body = json.loads(s3.get_object(Bucket=WORK, Key=key)["Body"].read())
        allowed = {"phase", "started_at", "updated_at", "frames_total", "segments_total", "segment_frames"}
        assert set(body) <= allowed | {"index", "frames", "at"}, key


def test_percent_by_segments_when_frames_are_unknown() -> None:
    half = {"phase": "segments", "segments": {"total": 4, "done": 2, "running": 0}}
    assert 5 < progress.percent(half) < 95
    assert progress.percent({"phase": "done"}) == 100 and progress.percent({"phase": "failed"}) == 0


def test_api_finds_the_job_by_version_or_by_etag(s3) -> None:
    """The S3 flow names the job after the event's version id, or its eTag without one."""
    config = api_flow.ApiConfig(output_bucket="out", upload_bucket="in", video_work_bucket=WORK)
    src = ObjectInfo(bucket="in", key="uploads/x.mp4", size=1, etag="e1", version_id="v1")
    storage = S3Storage(s3)
    assert api_flow.video_progress_of(src, storage=storage, config=config) == {"phase": "queued"}
    by_etag = job_id({"bucket": "in", "key": "uploads/x.mp4", "version_id": None, "etag": "e1"})
    progress.planning(s3, WORK, by_etag)
    assert api_flow.video_progress_of(src, storage=storage, config=config)["phase"] == "planning"
    by_version = job_id({"bucket": "in", "key": "uploads/x.mp4", "version_id": "v1", "etag": "e1"})
    progress.planned(s3, WORK, by_version, frames=5, segment_frames=[5])
    assert api_flow.video_progress_of(src, storage=storage, config=config)["phase"] == "segments"


def test_unreadable_progress_shows_as_queued() -> None:
    """No such bucket (or access denied): the poll still answers."""
    with mock_aws():
        config = api_flow.ApiConfig(output_bucket="out", upload_bucket="in", video_work_bucket="missing")
        src = ObjectInfo(bucket="in", key="uploads/x.mp4", size=1, etag="e1")
        got = api_flow.video_progress_of(
            src, storage=S3Storage(boto3.client("s3", region_name="us-east-1")), config=config
        )
        assert got == {"phase": "queued"}


def test_video_upload_options_are_checked_and_need_video_enabled() -> None:
    on = api_flow.ApiConfig(upload_bucket="in", video_work_bucket=WORK)
    values = {"audio": "drop", "detect-every": "3", "effect": "pixelate"}
    assert api_flow._video_upload_values(values, on) == {"audio": "drop", "detect_every": "3"}
    assert values == {"effect": "pixelate"}  # the image options stay for the image parser
    with pytest.raises(InvalidOptionsError):
        api_flow._video_upload_values({"audio": "louder"}, on)
    with pytest.raises(InvalidOptionsError):
        api_flow._video_upload_values({"detect_every": "many"}, on)
    with pytest.raises(UnsupportedVideoError):
        api_flow._video_upload_values({}, api_flow.ApiConfig(upload_bucket="in"))


def test_openapi_describes_video_progress() -> None:
    doc = api_flow.openapi_document()
    schemas = doc["components"]["schemas"]
    assert schemas["Result"]["properties"]["progress"] == {"$ref": "#/components/schemas/VideoProgress"}
    assert schemas["VideoProgress"]["properties"]["phase"]["enum"] == list(progress.PHASES)
    params = doc["paths"]["/uploads"]["post"]["parameters"]
    assert any(p["name"] == "kind" and "video" in p["schema"]["enum"] for p in params)


def test_api_reads_only_progress_records_of_the_work_bucket(tpl) -> None:  # noqa: F811
    res = tpl["Resources"]["ApiVideoProgressPolicy"]
    assert res["Condition"] == "VideoEnabled"
    assert props(tpl, "ApiVideoProgressPolicy")["Roles"] == [{"Ref": "ApiAnonymizeFunctionRole"}]
    grants = {}
    for st in props(tpl, "ApiVideoProgressPolicy")["PolicyDocument"]["Statement"]:
        assert st["Effect"] == "Allow"
        for action in as_list(st["Action"]):
            grants[action] = (json.dumps(st["Resource"]), st.get("Condition"))
    assert grants == {
        "s3:GetObject": (json.dumps({"Fn::Sub": "${VideoWorkBucket.Arn}/jobs/*/progress/*"}), None),
        "s3:ListBucket": (
            json.dumps({"Fn::GetAtt": ["VideoWorkBucket", "Arn"]}),
            {"StringLike": {"s3:prefix": "jobs/*/progress/*"}},
        ),
    }
    env = props(tpl, "ApiAnonymizeFunction")["Environment"]["Variables"]
    assert env["VIDEO_WORK_BUCKET"] == {"Fn::If": ["VideoEnabled", {"Ref": "VideoWorkBucket"}, ""]}
    assert (ROOT / "layers" / "anonymizer" / "anonymizer" / "video" / "progress.py").exists()
