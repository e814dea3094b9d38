"""Backfill against moto's HTTP server: the real ``functions/s3_backfill`` handler on S3 Batch
Operations invocation events (schema 2.0, as AWS documents it), and a whole local job through
``anonymize backfill``'s logic (manifest, job, completion report). The 1,000-object run is
``tools/backfill_run.py``."""

from __future__ import annotations

import argparse
import io
import json

import cv2
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from anonymizer_local import backfill, backfill_cli
from anonymizer_local.emulator import FakeLambdaContext
from anonymizer_local.event_capture import capture_events, drain

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]


@pytest.fixture
def small_jpegs(astronaut_bgr) -> list[bytes]:
    """Different small real pictures: crops of the astronaut portrait."""
    out = []
    for i in range(8):
        crop = astronaut_bgr[i * 20 : i * 20 + 256, i * 16 : i * 16 + 256]
        out.append(cv2.imencode(".jpg", cv2.resize(crop, (128, 128)))[1].tobytes())
    return out


def invocation(bucket: str, *keys: str) -> dict:
    """An S3 Batch Operations LambdaInvoke event, invocation schema 2.0 (keys URL-encoded)."""
    from urllib.parse import quote_plus

    return {
        "invocationSchemaVersion": "2.0",
        "invocationId": "YXNkbGZqYWRmaiBhc2RmdW9hZHNmZGpmaGFzbGtkaGZza2RmaAo",
        "job": {"id": "f3cc4f60-61f6-4a2b-8a21-d07600c373ce", "userArguments": {"requested-by": "test"}},
        "tasks": [
            {"taskId": f"task-{i}", "s3Bucket": bucket, "s3Key": quote_plus(k, safe="/"), "s3VersionId": None}
            for i, k in enumerate(keys)
        ],
    }


def output_images(local) -> list[str]:
    s3 = local.client("s3")
    paginator = s3.get_paginator("list_objects_v2")
    keys = [o["Key"] for p in paginator.paginate(Bucket=local.names.output_bucket) for o in p.get("Contents", [])]
    return sorted(k for k in keys if not k.endswith(".report.json"))


def test_result_codes_for_good_corrupt_throttled_and_missing(local, load_fn, engine, small_jpegs, monkeypatch):
    events_url = capture_events(local)
    fn = load_fn("s3_backfill", EVENT_BUS_NAME="default")
    s3 = local.client("s3")
    bucket = local.names.input_bucket
    s3.put_object(Bucket=bucket, Key="old/good photo.jpg", Body=small_jpegs[0])
    s3.put_object(Bucket=bucket, Key="old/corrupt.jpg", Body=small_jpegs[1][:200])
    s3.put_object(Bucket=bucket, Key="old/throttled.jpg", Body=small_jpegs[2])
    real_get = fn.storage.client.get_object

    def throttled_get(**kwargs):
        if kwargs["Key"] == "old/throttled.jpg":
            error = {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}
            raise ClientError({**error, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
        return real_get(**kwargs)

    monkeypatch.setattr(fn.storage.client, "get_object", throttled_get)
    keys = ["old/good photo.jpg", "old/corrupt.jpg", "old/throttled.jpg", "old/missing.jpg"]
    answer = fn.lambda_handler(invocation(bucket, *keys), FakeLambdaContext(function_name="anonymizer-backfill"))
    assert answer["invocationSchemaVersion"] == "2.0" and answer["treatMissingKeysAs"] == "PermanentFailure"
    assert answer["invocationId"] == "YXNkbGZqYWRmaiBhc2RmdW9hZHNmZGpmaGFzbGtkaGZza2RmaAo"
    codes = {r["taskId"]: (r["resultCode"], r["resultString"]) for r in answer["results"]}
    assert codes["task-0"][0] == "Succeeded" and codes["task-0"][1].startswith("anonymized:")
    assert codes["task-1"][0] == "PermanentFailure" and codes["task-1"][1].startswith("invalid_image:")
    assert codes["task-2"][0] == "TemporaryFailure" and codes["task-2"][1].startswith("SlowDown:")
    assert codes["task-3"] == ("PermanentFailure", f"NoSuchKey: s3://{bucket}/old/missing.jpg does not exist")
    assert output_images(local) == ["old/good photo.jpg"]
    kinds = sorted(
        (e["detail-type"], e["detail"]["input"]["key"], e["detail"]["trigger"]) for e in drain(local, events_url)
    )
    assert kinds == [
        ("Object Anonymized", "old/good photo.jpg", "backfill"),
        ("Object Failed", "old/corrupt.jpg", "backfill"),
    ]

    # S3 recovers; Batch Operations retries the temporary failure and, later, the whole job is rerun
    monkeypatch.setattr(fn.storage.client, "get_object", real_get)
    retry = fn.lambda_handler(invocation(bucket, "old/throttled.jpg"), FakeLambdaContext())
    assert retry["results"][0]["resultCode"] == "Succeeded"
    runs_before = engine.calls["anonymize"]
    rerun = fn.lambda_handler(invocation(bucket, *keys), FakeLambdaContext())
    assert [r["resultCode"] for r in rerun["results"]] == [
        "Succeeded",
        "PermanentFailure",
        "Succeeded",
        "PermanentFailure",
    ]
    assert rerun["results"][0]["resultString"].startswith("skipped: already anonymized")
    assert engine.calls["anonymize"] - runs_before <= 1  # only the corrupt one is tried again (decode fails)
    events = drain(local, events_url)
    assert [(e["detail-type"], e["detail"]["input"]["key"]) for e in events] == [
        ("Object Anonymized", "old/throttled.jpg")
    ]  # the rerun announced nothing new: exactly once per object from the pipeline's view


def make_args(**kw) -> argparse.Namespace:
    base = dict(
        source="s3://it-input/",
        inventory=None,
        stack=None,
        function_arn="arn:aws:lambda:us-east-1:123456789012:function:backfill",
        role_arn="arn:aws:iam::123456789012:role/batch",
        report_bucket="it-backfill",
        output_bucket=None,
        ms_per_image=250.0,
        memory_mb=2048,
        arch="arm64",
        dry_run=False,
        yes=True,
        poll=0.05,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def test_local_backfill_job_then_rerun_then_dry_run(local, load_fn, engine, small_jpegs):
    fn = load_fn("s3_backfill")
    s3 = local.client("s3")
    s3.create_bucket(Bucket="it-backfill")
    good = [f"library/{i:03d}.jpg" for i in range(12)]
    for i, key in enumerate(good):
        s3.put_object(Bucket="it-input", Key=key, Body=small_jpegs[i % len(small_jpegs)])
    s3.put_object(Bucket="it-input", Key="library/zz-broken.jpg", Body=b"\xff\xd8\xff\xe0 broken")
    s3.put_object(Bucket="it-input", Key="library/notes.txt", Body=b"not in the manifest")
    jobs = backfill.LocalJobs(fn.lambda_handler, s3)
    out, err = io.StringIO(), io.StringIO()

    code = backfill_cli.run(make_args(source="s3://it-input/library/"), s3=s3, jobs=jobs, out=out, err=err)
    assert code == backfill_cli.EXIT_PARTIAL, out.getvalue() + err.getvalue()
    text = out.getvalue()
    assert "13 object(s)" in text and "13 task(s): 12 anonymized, 0 skipped" in text
    assert "1 permanent failure(s)" in text and "library/zz-broken.jpg: invalid_image" in text
    assert "] 13/13 (12 ok, 1 failed) Complete" in err.getvalue()  # the progress bar's last state
    assert output_images(local) == good
    assert engine.calls["anonymize"] == 12 + 1

    out = io.StringIO()
    assert backfill_cli.run(make_args(source="s3://it-input/library/"), s3=s3, jobs=jobs, out=out, err=err) == 3
    assert "13 task(s): 0 anonymized, 12 skipped" in out.getvalue()
    assert engine.calls["anonymize"] - 13 <= 1  # the rerun ran no model on the 12 done ones
    assert output_images(local) == good

    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="it-backfill")["Contents"]]
    out = io.StringIO()
    assert backfill_cli.run(make_args(dry_run=True), s3=s3, out=out, err=err) == 0
    assert "dry run" in out.getvalue() and "would anonymize s3://it-input/library/000.jpg" in out.getvalue()
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="it-backfill")["Contents"]] == listed  # nothing new


def test_inventory_report_manifest(local):
    s3 = local.client("s3")
    s3.create_bucket(Bucket="it-inventory")
    import gzip

    rows = (
        '"it-input","a/one+photo.jpg","v1","true","false","10"\n'
        '"it-input","a/old.jpg","v0","false","false","10"\n'
        '"it-input","a/gone.jpg","v2","true","true","0"\n'
        '"it-input","a/readme.txt","v3","true","false","10"\n'
        '"it-input","b/two.png","v4","true","false","10"\n'
    )
    s3.put_object(Bucket="it-inventory", Key="inv/data/1.csv.gz", Body=gzip.compress(rows.encode()))
    manifest = {
        "sourceBucket": "it-input",
        "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size",
        "files": [{"key": "inv/data/1.csv.gz", "size": 1, "MD5checksum": "x"}],
    }
    s3.put_object(Bucket="it-inventory", Key="inv/manifest.json", Body=json.dumps(manifest).encode())
    entries = backfill.inventory_manifest(s3, "s3://it-inventory/inv/manifest.json", prefix="a/")
    assert entries == [backfill.ManifestEntry("it-input", "a/one photo.jpg", "v1", 10)]
    assert backfill.parse_manifest_csv(backfill.manifest_csv(entries)) == [
        backfill.ManifestEntry("it-input", "a/one photo.jpg", "v1")
    ]


def test_s3control_create_job_request_matches_the_api():
    """moto has no s3control:CreateJob: botocore's Stubber checks the request against the API model."""
    import boto3

    s3control = boto3.client("s3control", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    spec = backfill.JobSpec(
        account_id="123456789012",
        function_arn="arn:aws:lambda:us-east-1:123456789012:function:backfill",
        role_arn="arn:aws:iam::123456789012:role/batch",
        report_bucket="reports",
    )
    with Stubber(s3control) as stub:
        stub.add_response("create_job", {"JobId": "job-1"})
        stub.add_response(
            "describe_job",
            {
                "Job": {
                    "JobId": "job-1",
                    "Status": "Complete",
                    "ProgressSummary": {"TotalNumberOfTasks": 3, "NumberOfTasksSucceeded": 2, "NumberOfTasksFailed": 1},
                    "Report": {"Bucket": "arn:aws:s3:::reports", "Prefix": "reports", "Enabled": True},
                }
            },
            {"AccountId": "123456789012", "JobId": "job-1"},
        )
        jobs = backfill.S3ControlJobs(s3control=s3control, s3=object())
        assert jobs.create_job(spec, "backfill/manifests/m.csv", "etag", versioned=False) == "job-1"
        progress = jobs.describe("job-1")
    assert progress.done and (progress.total, progress.succeeded, progress.failed) == (3, 2, 1)
    assert progress.report_manifest_key == "reports/job-job-1/manifest.json"


def test_completion_report_summary():
    rows = backfill.parse_report_csv(
        b"b,k1.jpg,,succeeded,,200,anonymized: 1 face(s)\n"
        b"b,k2.jpg,,succeeded,,200,skipped: already anonymized\n"
        b"b,k+3.jpg,,failed,PermanentFailure,200,invalid_image: not an image\n"
        b"b,k4.jpg,,failed,200,TemporaryFailure,SlowDown: reduce your request rate\n"
    )
    summary = backfill.summarize_report(rows)
    assert {k: summary[k] for k in ("tasks", "anonymized", "skipped", "permanent_failures", "temporary_failures")} == {
        "tasks": 4,
        "anonymized": 1,
        "skipped": 1,
        "permanent_failures": 1,
        "temporary_failures": 1,
    }
    assert summary["failure_reasons"] == {"invalid_image": 1, "SlowDown": 1}
    assert summary["first_failures"][0]["key"] == "k 3.jpg"
    estimate = backfill.estimate_cost(1_000_000, 300.0)
    assert round(estimate.usd_lambda, 2) == round(1e6 * 0.3 * 2 * 0.0000133334 + 0.2, 2)


def test_the_anonymize_command_has_backfill(local, small_jpegs, capsys):
    from anonymizer_local.cli import main

    s3 = local.client("s3")
    s3.put_object(Bucket="it-input", Key="x/one.jpg", Body=small_jpegs[0])
    assert main(["backfill", "s3://it-input/x/", "--dry-run", "--ms-per-image", "200"]) == 0
    out = capsys.readouterr().out
    assert "1 object(s); 200 ms per image (given)" in out and "would anonymize s3://it-input/x/one.jpg" in out
    assert main(["backfill", "not-a-url", "--dry-run"]) == 1
    assert "expected s3://bucket" in capsys.readouterr().err


def test_backfill_after_the_live_flow_announces_nothing_twice(local, load_fn, engine, small_jpegs):
    """An object the live S3 flow already published is skipped by a backfill: one event in all."""
    events_url = capture_events(local)
    live = load_fn("s3_anonymize", EVENT_BUS_NAME="default")
    backfill_fn = load_fn("s3_backfill", EVENT_BUS_NAME="default")
    local.client("s3").put_object(Bucket="it-input", Key="both/doors.jpg", Body=small_jpegs[3])
    local.pump(live.lambda_handler)
    answer = backfill_fn.lambda_handler(invocation("it-input", "both/doors.jpg"), FakeLambdaContext())
    assert answer["results"][0]["resultCode"] == "Succeeded"
    assert answer["results"][0]["resultString"].startswith("skipped: already anonymized")
    assert engine.calls["anonymize"] == 1
    assert [e["detail"]["trigger"] for e in drain(local, events_url)] == ["s3"]


def test_backfill_asks_first_and_needs_the_stack(local, small_jpegs):
    s3 = local.client("s3")
    s3.create_bucket(Bucket="it-backfill")
    s3.put_object(Bucket="it-input", Key="ask/one.jpg", Body=small_jpegs[0])
    asked = []

    def decline(question: str) -> bool:
        asked.append(question)
        return False

    out, err = io.StringIO(), io.StringIO()
    args = make_args(source="s3://it-input/ask/", yes=False, ms_per_image=300.0)
    assert backfill_cli.run(args, s3=s3, confirm=decline, out=out, err=err) == backfill_cli.EXIT_USAGE
    assert asked == ["Start a Batch Operations job over 1 object(s), about $0.25? [y/N] "]
    assert "not started" in out.getvalue()
    assert "Contents" not in s3.list_objects_v2(Bucket="it-backfill")  # no manifest, no job
    args = make_args(source="s3://it-input/ask/", function_arn=None, role_arn=None)
    assert backfill_cli.run(args, s3=s3, out=out, err=err) == backfill_cli.EXIT_USAGE
    assert "--function-arn, --role-arn needed (or --stack)" in err.getvalue()
