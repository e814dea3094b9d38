"""Local emulation helpers: S3 keys never escape the output folder, proxy events are binary-safe."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from anonymizer.aws import api_flow
from anonymizer.options import Options
from anonymizer_local.emulator import (
    FakeLambdaContext,
    api_event,
    functions_dir,
    input_keys,
    proxy_response_parts,
    safe_local_path,
    sqs_event,
)


@pytest.mark.parametrize(
    ("key", "relative"),
    [
        ("a.jpg", "a.jpg"),
        ("../x.jpg", "_../x.jpg"),
        ("../../../etc/passwd", "_../_../_../etc/passwd"),
        ("%2e%2e/x.jpg", "%2e%2e/x.jpg"),
        ("/abs/x.jpg", "_/abs/x.jpg"),
        ("a//./b.jpg", "a/_/_./b.jpg"),
        ("ünïcödé/фото.jpg", "ünïcödé/фото.jpg"),
        ("..\\..\\win.jpg", "_../_../win.jpg"),
    ],
)
def test_safe_local_path_stays_inside(tmp_path, key, relative):
    path = safe_local_path(tmp_path, key)
    assert path == tmp_path.joinpath(*relative.split("/"))
    assert path.resolve().is_relative_to(tmp_path.resolve())


def testinput_keys(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.jpg").write_bytes(b"1")
    (tmp_path / "d" / "sub" / "b.PNG").write_bytes(b"2")
    (tmp_path / "d" / "notes.txt").write_text("x")
    (tmp_path / "a.jpg").write_bytes(b"3")
    pairs = input_keys([tmp_path / "d", tmp_path / "a.jpg"])
    assert [key for _, key in pairs] == ["a.jpg", "sub/b.PNG", "1/a.jpg"]  # no silent overwrite
    with pytest.raises(FileNotFoundError):
        input_keys([tmp_path / "missing.jpg"])


def test_api_event_and_response_are_binary_safe():
    body = bytes(range(256))
    event = api_event("post", "/anonymize", query={"effect": ["blur", "pixelate"]}, headers={"Host": "h:1"}, body=body)
    assert event["httpMethod"] == "POST" and event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body
    assert event["queryStringParameters"] == {"effect": "pixelate"}
    assert event["multiValueQueryStringParameters"] == {"effect": ["blur", "pixelate"]}
    assert event["requestContext"]["requestId"]
    assert api_event("GET", "/x")["body"] is None

    status, headers, data = proxy_response_parts(
        {
            "statusCode": 200,
            "multiValueHeaders": {"Content-Type": ["image/png"], "X-A": ["1"]},
            "body": base64.b64encode(body).decode(),
            "isBase64Encoded": True,
        }
    )
    assert status == 200 and data == body and ("Content-Type", "image/png") in headers


def test_sqs_event_shape():
    event = sqs_event(
        [{"MessageId": "m1", "ReceiptHandle": "r", "Body": "{}", "Attributes": {"ApproximateReceiveCount": "2"}}],
        "arn:aws:sqs:eu-west-1:123456789012:q",
    )
    (record,) = event["Records"]
    assert record["messageId"] == "m1" and record["eventSource"] == "aws:sqs" and record["awsRegion"] == "eu-west-1"
    assert record["attributes"]["ApproximateReceiveCount"] == "2"


def test_fake_context_and_functions_dir():
    ctx = FakeLambdaContext()
    assert 0 < ctx.get_remaining_time_in_millis() <= 900_000
    assert ctx.invoked_function_arn.endswith(":function:anonymizer-local")
    assert (functions_dir() / "s3_anonymize" / "app.py").is_file()
    assert (functions_dir() / "api_anonymize" / "app.py").is_file()


# -- api_flow pieces ----------------------------------------------------------------------------


def test_request_options_format_json():
    options, want_json = api_flow.request_options({"format": "JSON", "effect": "fill"}, Options())
    assert want_json and options.output_format is None and options.face.effect == "fill"
    options, want_json = api_flow.request_options({"format": "png"}, Options())
    assert not want_json and options.output_format == "png"


@pytest.mark.parametrize(
    ("headers", "ctx", "url"),
    [
        (
            {"Host": "abc.execute-api.eu-west-1.amazonaws.com"},
            {"stage": "v1"},
            "https://abc.execute-api.eu-west-1.amazonaws.com/v1",
        ),
        ({"Host": "api.example.org"}, {"stage": "v1"}, "https://api.example.org"),
        ({"host": "127.0.0.1:8080", "X-Forwarded-Proto": "http"}, {"stage": "local"}, "http://127.0.0.1:8080"),
        ({}, {}, ""),
    ],
)
def test_base_url(headers, ctx, url):
    assert api_flow._base_url({"headers": headers, "requestContext": ctx}) == url


def test_request_body_rejects_bad_base64():
    from anonymizer.errors import InvalidImageError

    with pytest.raises(InvalidImageError, match="base64"):
        api_flow.request_body({"body": "***", "isBase64Encoded": True})


def test_openapi_document_is_json_and_complete():
    doc = json.loads(json.dumps(api_flow.openapi_document("https://x")))
    assert doc["servers"] == [{"url": "https://x"}]
    for path, method in [
        ("/anonymize", "post"),
        ("/uploads", "post"),
        ("/results/{id}", "get"),
        ("/openapi.json", "get"),
    ]:
        assert doc["paths"][path][method]["responses"]
    refs = json.dumps(doc).count("#/components/schemas/")
    assert refs and all(name in doc["components"]["schemas"] for name in ("Error", "Upload", "Result"))


def test_sample_events_are_valid_json():
    events = Path(__file__).resolve().parents[2] / "events"
    names = {p.name for p in events.glob("*.json")}
    assert {
        "s3_put.json",
        "sqs_s3_put.json",
        "api_anonymize_jpeg.json",
        "api_anonymize_json.json",
        "api_uploads.json",
        "api_results.json",
        "api_bad_option.json",
    } <= names
    for name in names:
        json.loads((events / name).read_text())


# -- the dev server's request checks (no server needed) -----------------------------------------


def _headers(*pairs: tuple[str, str]):
    from email.message import Message

    message = Message()
    for name, value in pairs:
        message[name] = value
    return message


@pytest.mark.parametrize(
    ("pairs", "length", "status"),
    [
        ((), 0, None),
        ((("Content-Length", "12"),), 12, None),
        ((("Content-Length", "12"), ("Content-Length", "12")), 12, None),
        ((("Content-Length", "abc"),), 0, 400),
        ((("Content-Length", "-1"),), 0, 400),
        ((("Content-Length", "+5"),), 0, 400),
        ((("Content-Length", "12"), ("Content-Length", "13")), 0, 400),  # request smuggling shape
        ((("Content-Length", str(20 * 1024 * 1024)),), 0, 413),
        ((("Transfer-Encoding", "chunked"),), 0, 411),
    ],
)
def test_content_length_is_read_only_when_it_is_one_plain_number(pairs, length, status):
    from anonymizer_local.server import _content_length

    got, problem = _content_length(_headers(*pairs))
    assert got == length and (problem[0] if problem else None) == status


def test_the_host_the_api_sees_is_the_server_itself():
    from anonymizer_local.server import _forwarded_headers

    forged = _headers(("Host", "evil.example"), ("X-Forwarded-Host", "evil"), ("X-Forwarded-Proto", "https"))
    headers = _forwarded_headers(forged, ("127.0.0.1", 8080))
    assert headers["Host"] == "127.0.0.1:8080" and headers["X-Forwarded-Proto"] == "http"
    assert "evil" not in json.dumps(headers)
    assert api_flow._base_url({"headers": headers, "requestContext": {"stage": "local"}}) == "http://127.0.0.1:8080"
