"""The S3 function end to end against moto's HTTP server: input bucket -> S3 notification ->
SQS -> the real handler -> output bucket, with the real Anonymizer."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote_plus

import cv2
import numpy as np
import pytest

from anonymizer_local.emulator import FakeLambdaContext, run_local_s3_flow, sqs_event

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]


def output_keys(local) -> list[str]:
    s3 = local.client("s3")
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=local.names.output_bucket).get("Contents", []))


def tags_of(local, bucket: str, key: str) -> dict:
    return {t["Key"]: t["Value"] for t in local.client("s3").get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


def receive_all(local) -> list[dict]:
    """Every visible message (S3 notifications), ignoring the s3:TestEvent."""
    sqs = local.client("sqs")
    messages = []
    while True:
        got = sqs.receive_message(
            QueueUrl=local.resources["queue_url"], MaxNumberOfMessages=10, AttributeNames=["All"]
        ).get("Messages", [])
        if not got:
            return messages
        messages += [m for m in got if "s3:TestEvent" not in m["Body"]]


def anonymized_change(original_jpeg: bytes, output: bytes, box) -> tuple[float, float]:
    """Mean absolute difference inside the detected box and outside it."""
    a = cv2.imdecode(np.frombuffer(original_jpeg, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)
    b = cv2.imdecode(np.frombuffer(output, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)
    assert a.shape == b.shape
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    mask = np.zeros(a.shape[:2], bool)
    mask[y1:y2, x1:x2] = True
    diff = np.abs(a - b).mean(axis=2)
    return float(diff[mask].mean()), float(diff[~mask].mean())


def test_put_object_is_anonymized_into_the_output_bucket(local, load_fn, engine, astronaut_jpeg):
    fn = load_fn("s3_anonymize")
    s3 = local.client("s3")
    key = "crew/astronaut portrait.jpg"
    s3.put_object(
        Bucket=local.names.input_bucket, Key=key, Body=astronaut_jpeg, Metadata={"anonymize-face-effect": "pixelate"}
    )

    (run,) = local.pump(fn.lambda_handler)
    assert run["response"] == {"batchItemFailures": []}
    assert engine.calls["anonymize"] == 1
    assert output_keys(local) == [key, key + ".report.json"]

    obj = s3.get_object(Bucket=local.names.output_bucket, Key=key)
    assert obj["ContentType"] == "image/jpeg"
    assert int(obj["Metadata"]["anonymizer-faces"]) >= 1
    tags = tags_of(local, local.names.output_bucket, key)
    assert tags["anonymizer-status"] == "ok" and tags["anonymizer-model"].startswith("face=")
    output = obj["Body"].read()

    report = json.loads(s3.get_object(Bucket=local.names.output_bucket, Key=key + ".report.json")["Body"].read())
    assert report["status"] == "ok" and report["source"]["key"] == key
    faces = [d for d in report["report"]["detections"] if d["label"] == "face"]
    assert faces and all(d["effect"] == "pixelate" for d in faces)
    inside, outside = anonymized_change(astronaut_jpeg, output, faces[0]["box"])
    assert inside > 8 and inside > 3 * outside  # the face changed, the rest barely (re-encoding)

    # the input bucket holds only the original, untouched
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=local.names.input_bucket)["Contents"]] == [key]
    assert s3.get_object(Bucket=local.names.input_bucket, Key=key)["Body"].read() == astronaut_jpeg


def test_duplicate_event_is_processed_exactly_once(local, load_fn, engine, astronaut_jpeg):
    fn = load_fn("s3_anonymize")
    s3 = local.client("s3")
    s3.put_object(Bucket=local.names.input_bucket, Key="twice.jpg", Body=astronaut_jpeg)
    (message,) = receive_all(local)
    event = sqs_event([message], local.resources["queue_arn"])
    redelivered = sqs_event([dict(message, MessageId="redelivered-1")], local.resources["queue_arn"])

    assert fn.lambda_handler(event, FakeLambdaContext()) == {"batchItemFailures": []}
    first = s3.head_object(Bucket=local.names.output_bucket, Key="twice.jpg")
    assert fn.lambda_handler(redelivered, FakeLambdaContext()) == {"batchItemFailures": []}
    # a new container (cold start) consults the same idempotency table
    fn2 = load_fn("s3_anonymize")
    assert fn2.lambda_handler(event, FakeLambdaContext()) == {"batchItemFailures": []}

    assert engine.calls["anonymize"] == 1  # the pipeline ran once for three deliveries
    second = s3.head_object(Bucket=local.names.output_bucket, Key="twice.jpg")
    assert first["ETag"] == second["ETag"] and first["LastModified"] == second["LastModified"]
    items = local.client("dynamodb").scan(TableName=local.names.table)["Items"]
    assert len(items) == 1 and items[0]["status"]["S"] == "COMPLETED"


def test_corrupt_objects_are_refused_once_with_a_failure_report(local, load_fn, engine, astronaut_jpeg):
    """Regression: a permanent failure (not an image) failed its record, was retried 3 times and
    ended in the DLQ; now it is refused on its first try: one failure report, code-only tags."""
    fn = load_fn("s3_anonymize")
    s3 = local.client("s3")
    bucket = local.names.input_bucket
    s3.put_object(Bucket=bucket, Key="good.jpg", Body=astronaut_jpeg)
    s3.put_object(Bucket=bucket, Key="truncated.jpg", Body=astronaut_jpeg[: len(astronaut_jpeg) // 2])
    s3.put_object(Bucket=bucket, Key="text.jpg", Body=b"hello, I am not a picture")
    messages = receive_all(local)
    assert len(messages) == 3

    response = fn.lambda_handler(sqs_event(messages, local.resources["queue_arn"]), FakeLambdaContext())
    assert response == {"batchItemFailures": []}  # nothing to retry
    assert output_keys(local) == [  # no image for the refused ones, only their failure report
        "good.jpg",
        "good.jpg.report.json",
        "text.jpg.report.json",
        "truncated.jpg.report.json",
    ]
    for key in ("truncated.jpg", "text.jpg"):
        assert tags_of(local, bucket, key) == {"anonymizer-status": "failed", "anonymizer-error": "invalid_image"}
        report = json.loads(s3.get_object(Bucket=local.names.output_bucket, Key=key + ".report.json")["Body"].read())
        assert report["status"] == "failed" and report["error"] == "invalid_image" and report["message"]
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # the input is left as it was


def test_permanent_failure_never_reaches_the_dlq_transient_one_does(local, load_fn, engine, monkeypatch):
    fn = load_fn("s3_anonymize")
    sqs = local.client("sqs")
    sqs.set_queue_attributes(QueueUrl=local.resources["queue_url"], Attributes={"VisibilityTimeout": "0"})
    local.client("s3").put_object(Bucket=local.names.input_bucket, Key="bad.png", Body=b"\x89PNG\r\n\x1a\nnope")
    runs = local.pump(fn.lambda_handler)
    assert sum(len(r["response"]["batchItemFailures"]) for r in runs) == 0 and engine.calls["anonymize"] == 1
    assert sqs.receive_message(QueueUrl=local.resources["dlq_url"]).get("Messages", []) == []
    assert output_keys(local) == ["bad.png.report.json"]

    # a fault that retrying might fix (S3 refuses every write): 3 tries, then the DLQ, nothing published
    from botocore.exceptions import ClientError

    def refuse(**kwargs):
        raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "PutObject")

    monkeypatch.setattr(fn.storage.client, "put_object", refuse)
    local.client("s3").put_object(Bucket=local.names.input_bucket, Key="later.png", Body=PNG_1PX)
    runs = local.pump(fn.lambda_handler)  # redelivered until maxReceiveCount (3), then the DLQ
    assert sum(len(r["response"]["batchItemFailures"]) for r in runs) == 3
    dlq = sqs.receive_message(QueueUrl=local.resources["dlq_url"], MaxNumberOfMessages=10).get("Messages", [])
    assert [json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"] for m in dlq] == ["later.png"]
    assert output_keys(local) == ["bad.png.report.json"]


PNG_1PX = cv2.imencode(".png", np.full((8, 8, 3), 128, np.uint8))[1].tobytes()


def test_object_over_max_bytes_is_rejected_before_download(local, load_fn, engine, astronaut_jpeg, monkeypatch):
    fn = load_fn("s3_anonymize", MAX_OBJECT_BYTES=str(len(astronaut_jpeg) - 1))
    downloads = []
    real_get = fn.storage.client.get_object
    monkeypatch.setattr(fn.storage.client, "get_object", lambda **kw: downloads.append(kw) or real_get(**kw))
    s3 = local.client("s3")
    s3.put_object(Bucket=local.names.input_bucket, Key="big.jpg", Body=astronaut_jpeg)
    s3.put_object(Bucket=local.names.input_bucket, Key="big2.jpg", Body=astronaut_jpeg + b"\0")
    first, second = sorted(receive_all(local), key=lambda m: m["Body"])

    # 1. the event's size is over the limit: refused without a request to S3, and not retried
    response = fn.lambda_handler(sqs_event([first], local.resources["queue_arn"]), FakeLambdaContext())
    assert response == {"batchItemFailures": []}
    # 2. an event that understates the size: HEAD finds out, still no download
    body = json.loads(second["Body"])
    body["Records"][0]["s3"]["object"]["size"] = 10
    lying = dict(second, MessageId="m-lying", Body=json.dumps(body))
    response = fn.lambda_handler(sqs_event([lying], local.resources["queue_arn"]), FakeLambdaContext())
    assert response == {"batchItemFailures": []}

    assert [d["Key"] for d in downloads if d["Bucket"] == local.names.input_bucket] == []
    assert engine.calls["anonymize"] == 0
    assert output_keys(local) == ["big.jpg.report.json", "big2.jpg.report.json"]
    for key in ("big.jpg", "big2.jpg"):
        assert tags_of(local, local.names.input_bucket, key)["anonymizer-error"] == "image_too_large"
        report = json.loads(s3.get_object(Bucket=local.names.output_bucket, Key=key + ".report.json")["Body"].read())
        # regression: the message used to come back garbled from a tag ("bytes_ the limit is")
        assert f"; the limit is {len(astronaut_jpeg) - 1} bytes (MAX_OBJECT_BYTES)" in report["message"]


KEYS = ["../x.jpg", "%2e%2e/x.jpg", "ünïcödé/фото.jpg", "a b+c/./d.jpg", "//double//slash.jpg"]


def test_odd_keys_keep_their_exact_key(local, load_fn, engine, astronaut_jpeg):
    fn = load_fn("s3_anonymize", ANONYMIZER_TARGETS="face")
    s3 = local.client("s3")
    small = cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(astronaut_jpeg, np.uint8), 1)[::4, ::4])[1].tobytes()
    for key in KEYS:
        s3.put_object(Bucket=local.names.input_bucket, Key=key, Body=small)
    # moto encodes keys like quote_plus (even "/"); real S3 leaves "/" alone: send that shape too
    messages = receive_all(local)
    assert len(messages) == len(KEYS)
    aws_style = []
    for m in messages[:2]:
        body = json.loads(m["Body"])
        obj = body["Records"][0]["s3"]["object"]
        from urllib.parse import unquote_plus

        obj["key"] = quote_plus(unquote_plus(obj["key"]), safe="/")
        aws_style.append(dict(m, MessageId=m["MessageId"] + "-aws", Body=json.dumps(body)))
    response = fn.lambda_handler(sqs_event(messages + aws_style, local.resources["queue_arn"]), FakeLambdaContext())
    assert response == {"batchItemFailures": []}
    assert engine.calls["anonymize"] == len(KEYS)  # the AWS-style duplicates hit idempotency
    assert output_keys(local) == sorted(KEYS + [k + ".report.json" for k in KEYS])
    # and the input bucket received nothing new
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=local.names.input_bucket)["Contents"]) == sorted(KEYS)


def test_run_local_s3_flow(tmp_path, engine, astronaut_jpeg, local):
    """`anonymize local-run`: its own moto server, the real function, results on disk."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "astronaut.jpg").write_bytes(astronaut_jpeg)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nothing more")
    summary = run_local_s3_flow([tmp_path / "in"], tmp_path / "out", {"targets": "face"}, quiet=True)
    assert summary["ok"] == 1 and summary["failed"] == 1
    by_key = {o["key"]: o for o in summary["objects"]}
    assert by_key["broken.jpg"]["error"] == "invalid_image"
    ok = by_key["astronaut.jpg"]
    assert ok["faces"] >= 1 and Path(ok["output"]).read_bytes()[:3] == b"\xff\xd8\xff"
    report = json.loads(Path(ok["report"]).read_text())
    assert report["options"] == {"targets": "face"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["astronaut.jpg", "astronaut.jpg.report.json"]
