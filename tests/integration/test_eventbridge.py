"""Completion events and the EventBridge input, against moto's HTTP server with the real S3
function: events are captured by a rule on the default bus whose target is an SQS queue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from anonymizer_local.event_capture import capture_events, drain

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]

jsonschema = pytest.importorskip("jsonschema")
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "events" / "object-event.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def output_images(local) -> list[str]:
    s3 = local.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=local.names.output_bucket).get("Contents", [])]
    return sorted(k for k in keys if not k.endswith(".report.json"))


@pytest.fixture
def small_jpeg(astronaut_bgr) -> bytes:
    import cv2

    return cv2.imencode(".jpg", cv2.resize(astronaut_bgr, (192, 192)))[1].tobytes()


def test_success_event_after_the_output_is_written_and_only_once(local, load_fn, engine, small_jpeg):
    events_url = capture_events(local)
    fn = load_fn("s3_anonymize", EVENT_BUS_NAME="default")
    s3 = local.client("s3")
    s3.put_object(Bucket=local.names.input_bucket, Key="crew/one photo.jpg", Body=small_jpeg)
    (run,) = local.pump(fn.lambda_handler)
    assert run["response"] == {"batchItemFailures": []}

    (event,) = drain(local, events_url)
    VALIDATOR.validate(event)
    assert event["source"] == "anonymizer" and event["detail-type"] == "Object Anonymized"
    detail = event["detail"]
    assert detail["trigger"] == "s3" and detail["input"]["key"] == "crew/one photo.jpg"
    assert detail["input"]["bucket"] == local.names.input_bucket and detail["input"]["version_id"] is None
    # the event names what is there: the output and its report can be read when it arrives
    out = s3.get_object(Bucket=detail["output"]["bucket"], Key=detail["output"]["key"])
    assert out["ContentLength"] == detail["output"]["size"] and out["ETag"].strip('"') == detail["output"]["etag"]
    report = json.loads(s3.get_object(Bucket=local.names.output_bucket, Key=detail["report_key"])["Body"].read())
    assert detail["counts"] == report["counts"] and detail["models"] == report["models"]
    assert "detections" not in detail  # boxes only when the deployment asks

    # the same S3 notification delivered again: idempotency, no second run, no second event
    message = {"MessageId": "again", "ReceiptHandle": "r", "Body": run["event"]["Records"][0]["body"]}
    from anonymizer_local.emulator import FakeLambdaContext, sqs_event

    assert fn.lambda_handler(sqs_event([message], local.resources["queue_arn"]), FakeLambdaContext()) == {
        "batchItemFailures": []
    }
    assert engine.calls["anonymize"] == 1 and drain(local, events_url) == []


def test_failure_event_once_for_a_corrupt_object(local, load_fn, engine, small_jpeg):
    events_url = capture_events(local)
    fn = load_fn("s3_anonymize", EVENT_BUS_NAME="default")
    local.client("sqs").set_queue_attributes(
        QueueUrl=local.resources["queue_url"], Attributes={"VisibilityTimeout": "0"}
    )
    local.client("s3").put_object(Bucket=local.names.input_bucket, Key="broken.jpg", Body=small_jpeg[:300])
    local.pump(fn.lambda_handler)  # however often it is delivered (retries, redelivery)
    (event,) = drain(local, events_url)
    VALIDATOR.validate(event)
    assert event["detail-type"] == "Object Failed"
    assert event["detail"]["error"]["code"] == "invalid_image" and event["detail"]["input"]["key"] == "broken.jpg"
    assert output_images(local) == []


def test_no_event_when_the_output_write_fails(local, load_fn, engine, small_jpeg, monkeypatch):
    events_url = capture_events(local)
    fn = load_fn("s3_anonymize", EVENT_BUS_NAME="default")
    real_put = fn.storage.put

    def failing_put(bucket, key, data, **kwargs):
        if kwargs.get("content_type") != "application/json":  # the image, not its report
            raise ClientError({"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}}, "Put")
        return real_put(bucket, key, data, **kwargs)

    monkeypatch.setattr(fn.storage, "put", failing_put)
    sqs = local.client("sqs")
    sqs.set_queue_attributes(QueueUrl=local.resources["queue_url"], Attributes={"VisibilityTimeout": "0"})
    local.client("s3").put_object(Bucket=local.names.input_bucket, Key="unlucky.jpg", Body=small_jpeg)
    (run,) = local.pump(fn.lambda_handler, rounds=1)
    assert len(run["response"]["batchItemFailures"]) == 1  # retried later
    assert drain(local, events_url) == [] and output_images(local) == []

    monkeypatch.setattr(fn.storage, "put", real_put)  # S3 is back: the retry publishes and announces
    local.pump(fn.lambda_handler)
    (event,) = drain(local, events_url)
    assert event["detail-type"] == "Object Anonymized" and output_images(local) == ["unlucky.jpg"]


def wire_eventbridge_input(local) -> None:
    """InputWiring=EventBridgeToSqs: S3 EventBridge notifications -> rule -> the input queue."""
    s3, sqs, eb = local.client("s3"), local.client("sqs"), local.client("events")
    bucket = local.names.input_bucket
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}})
    sqs.purge_queue(QueueUrl=local.resources["queue_url"])
    pattern = {"source": ["aws.s3"], "detail-type": ["Object Created"], "detail": {"bucket": {"name": [bucket]}}}
    eb.put_rule(Name="input-object-created", EventPattern=json.dumps(pattern), State="ENABLED")
    eb.put_targets(Rule="input-object-created", Targets=[{"Id": "input-queue", "Arn": local.resources["queue_arn"]}])


def test_eventbridge_input_end_to_end(local, load_fn, engine, small_jpeg):
    s3, sqs = local.client("s3"), local.client("sqs")
    bucket = local.names.input_bucket
    wire_eventbridge_input(local)
    events_url = capture_events(local)
    fn = load_fn("s3_anonymize", EVENT_BUS_NAME="default")

    s3.put_object(Bucket=bucket, Key="door/two.jpg", Body=small_jpeg)
    runs = local.pump(fn.lambda_handler)
    bodies = [json.loads(r["body"]) for run in runs for r in run["event"]["Records"]]
    assert [b["detail-type"] for b in bodies] == ["Object Created"]  # not an S3 notification
    assert all(run["response"] == {"batchItemFailures": []} for run in runs)
    assert output_images(local) == ["door/two.jpg"]
    (event,) = drain(local, events_url)
    VALIDATOR.validate(event)
    assert event["detail"]["trigger"] == "eventbridge" and event["detail"]["input"]["key"] == "door/two.jpg"

    # the same EventBridge event again (at-least-once delivery): processed once, announced once
    sqs.send_message(QueueUrl=local.resources["queue_url"], MessageBody=json.dumps(bodies[0]))
    local.pump(fn.lambda_handler)
    assert engine.calls["anonymize"] == 1 and drain(local, events_url) == []

    # a corrupt object through this door: same failure handling (no output, one failure event)
    sqs.set_queue_attributes(QueueUrl=local.resources["queue_url"], Attributes={"VisibilityTimeout": "0"})
    s3.put_object(Bucket=bucket, Key="door/bad.jpg", Body=b"not a picture")
    local.pump(fn.lambda_handler)
    (failed,) = drain(local, events_url)
    assert failed["detail-type"] == "Object Failed" and failed["detail"]["trigger"] == "eventbridge"
    assert output_images(local) == ["door/two.jpg"]


def test_eventbridge_keys_as_sent_and_url_encoded(local, load_fn, engine, small_jpeg):
    """Whether EventBridge sends an S3 key as it is (AWS's examples, moto) or URL-encoded
    (Powertools' reading), the object is found: a key with a real "+" stays as sent, and an
    encoded key that does not exist is read under its decoded form."""
    s3, sqs = local.client("s3"), local.client("sqs")
    bucket = local.names.input_bucket
    wire_eventbridge_input(local)
    fn = load_fn("s3_anonymize")
    s3.put_object(Bucket=bucket, Key="door/c++ a.jpg", Body=small_jpeg)  # moto sends the key as it is
    local.pump(fn.lambda_handler)
    assert output_images(local) == ["door/c++ a.jpg"]

    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})  # events by hand now
    s3.put_object(Bucket=bucket, Key="door/x y+z.jpg", Body=small_jpeg)
    encoded = {
        "version": "0",
        "source": "aws.s3",
        "detail-type": "Object Created",
        "detail": {"bucket": {"name": bucket}, "object": {"key": "door/x+y%2Bz.jpg", "size": len(small_jpeg)}},
    }
    sqs.send_message(QueueUrl=local.resources["queue_url"], MessageBody=json.dumps(encoded))
    (run,) = local.pump(fn.lambda_handler)
    assert run["response"] == {"batchItemFailures": []}
    assert output_images(local) == ["door/c++ a.jpg", "door/x y+z.jpg"]
    report = s3.get_object(Bucket=local.names.output_bucket, Key="door/x y+z.jpg.report.json")
    report = json.loads(report["Body"].read())
    assert report["source"]["key"] == "door/x y+z.jpg"


def test_eventbridge_too_large_url_encoded_key_fails_under_the_real_key(local, load_fn, engine, small_jpeg):
    """An object the event already says is too large is never downloaded; when its EventBridge key
    came URL-encoded, the failure report and the input's tags land on the object that exists."""
    s3, sqs = local.client("s3"), local.client("sqs")
    bucket = local.names.input_bucket
    fn = load_fn("s3_anonymize", MAX_OBJECT_BYTES=str(len(small_jpeg) - 1))
    s3.put_object(Bucket=bucket, Key="big/x y+z.jpg", Body=small_jpeg)
    s3.put_object(Bucket=bucket, Key="big/c++.jpg", Body=small_jpeg)
    sqs.purge_queue(QueueUrl=local.resources["queue_url"])
    for key in ("big/x+y%2Bz.jpg", "big/c++.jpg"):  # encoded; a real "+" sent as it is
        event = {
            "version": "0",
            "source": "aws.s3",
            "detail-type": "Object Created",
            "detail": {"bucket": {"name": bucket}, "object": {"key": key, "size": len(small_jpeg)}},
        }
        sqs.send_message(QueueUrl=local.resources["queue_url"], MessageBody=json.dumps(event))
    runs = local.pump(fn.lambda_handler)
    assert all(run["response"] == {"batchItemFailures": []} for run in runs)
    assert output_images(local) == []  # fail closed
    reports = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=local.names.output_bucket).get("Contents", []))
    assert reports == ["big/c++.jpg.report.json", "big/x y+z.jpg.report.json"]
    for key in ("big/x y+z.jpg", "big/c++.jpg"):
        report = json.loads(s3.get_object(Bucket=local.names.output_bucket, Key=f"{key}.report.json")["Body"].read())
        assert report["status"] == "failed" and report["error"] == "image_too_large"
        assert report["source"]["key"] == key
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
        assert tags["anonymizer-status"] == "failed"
