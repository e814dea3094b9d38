"""The API function end to end: real handler, real Anonymizer, moto's HTTP server for the
presigned upload flow, and the local HTTP server that `anonymize serve` runs."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import requests

from anonymizer_local.emulator import FakeLambdaContext, api_event
from anonymizer_local.server import LocalApi

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]


def call(fn, method: str, path: str, *, query=None, body: bytes | None = None, headers=None) -> tuple[int, dict, bytes]:
    event = api_event(
        method,
        path,
        query={k: [v] for k, v in (query or {}).items()},
        headers={"Host": "abc123.execute-api.eu-west-1.amazonaws.com", "X-Forwarded-Proto": "https", **(headers or {})},
        body=body,
    )
    response = fn.lambda_handler(event, FakeLambdaContext(function_name="anonymizer-api"))
    headers_out = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()}
    headers_out.update(response.get("headers") or {})
    raw = response["body"] or ""
    data = base64.b64decode(raw) if response["isBase64Encoded"] else raw.encode()
    return response["statusCode"], headers_out, data


@pytest.fixture
def api(load_fn):
    return load_fn("api_anonymize")


def post_form(upload: dict, data: bytes) -> requests.Response:
    """What a client does with POST /uploads' answer: the signed fields, then the file (a presigned POST)."""
    ticket = upload["upload"]
    assert ticket["method"] == "POST"
    files = {ticket["file_field"]: ("image", data)}
    return requests.post(ticket["url"], data=ticket["fields"], files=files, timeout=30)


@pytest.fixture(scope="module")
def big_png(astronaut_bgr) -> bytes:
    """A 1600 x 1600 PNG of the astronaut with grain: over 5 MB, past the synchronous limit."""
    big = cv2.resize(astronaut_bgr, (1600, 1600))
    noise = np.random.default_rng(0).normal(0, 8, big.shape)
    png = cv2.imencode(".png", np.clip(big + noise, 0, 255).astype(np.uint8))[1].tobytes()
    assert len(png) * 4 / 3 > 6 * 1024 * 1024
    return png


def test_anonymize_returns_the_image_binary(api, engine, astronaut_jpeg):
    status, headers, data = call(
        api,
        "POST",
        "/anonymize",
        query={"face.effect": "pixelate"},
        body=astronaut_jpeg,
        headers={"Content-Type": "image/jpeg"},
    )
    assert status == 200
    assert headers["Content-Type"] == "image/jpeg"
    assert int(headers["X-Anonymizer-Faces"]) >= 1
    out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == (512, 512, 3)
    assert data != astronaut_jpeg and engine.calls["anonymize"] == 1


def test_png_in_png_out_and_format_option(api, engine, astronaut_bgr):
    png = cv2.imencode(".png", astronaut_bgr[::2, ::2])[1].tobytes()
    status, headers, data = call(api, "POST", "/anonymize", body=png, headers={"Content-Type": "image/png"})
    assert status == 200 and headers["Content-Type"] == "image/png" and data[:4] == b"\x89PNG"
    status, headers, data = call(api, "POST", "/anonymize", query={"format": "webp"}, body=png)
    assert status == 200 and headers["Content-Type"] == "image/webp" and data[8:12] == b"WEBP"


def test_format_json_returns_the_detections_report(api, engine, astronaut_jpeg):
    status, headers, data = call(api, "POST", "/anonymize", query={"format": "json"}, body=astronaut_jpeg)
    assert status == 200 and headers["Content-Type"] == "application/json"
    report = json.loads(data)
    assert report["counts"]["face"] >= 1
    assert report["detections"][0]["label"] == "face" and len(report["detections"][0]["box"]) == 4
    assert engine.calls == {"detect": 1}


@pytest.mark.parametrize(
    ("query", "body", "status", "code", "words"),
    [
        ({"effect": "sparkle"}, "jpeg", 400, "invalid_options", "effect"),
        ({"threshold": "7"}, "jpeg", 400, "invalid_options", "threshold"),
        ({"colour": "red"}, "jpeg", 400, "invalid_options", "unknown option"),
        ({}, b"GIF89a not really", 400, "invalid_image", ""),
        ({}, "truncated", 400, "invalid_image", ""),
        ({}, b"", 400, "invalid_image", "empty"),
    ],
)
def test_client_errors_are_4xx_with_messages(api, engine, astronaut_jpeg, query, body, status, code, words):
    if body == "jpeg":
        body = astronaut_jpeg
    elif body == "truncated":
        body = astronaut_jpeg[: len(astronaut_jpeg) // 3]
    got, headers, data = call(api, "POST", "/anonymize", query=query, body=body, headers={"Content-Type": "image/jpeg"})
    assert got == status and headers["Content-Type"] == "application/json"
    payload = json.loads(data)
    assert payload["error"] == code and words in payload["message"] and payload["message"]


def test_large_image_goes_through_the_presigned_flow(api, load_fn, local, engine, big_png):
    # 1. too large for the synchronous API: 413 that points to /uploads, pipeline never runs
    status, _, data = call(api, "POST", "/anonymize", body=big_png, headers={"Content-Type": "image/png"})
    assert status == 413 and "POST /uploads" in json.loads(data)["message"]
    assert engine.calls["anonymize"] == 0

    # 2. ask for an upload URL, with options
    status, headers, data = call(api, "POST", "/uploads", query={"face.effect": "pixelate", "targets": "face"})
    assert status == 201
    upload = json.loads(data)
    upload_id = upload["id"]
    assert headers["Location"].endswith(f"/results/{upload_id}")
    status, _, _ = call(api, "GET", f"/results/{upload_id}")
    assert status == 404  # nothing uploaded yet

    # 3. the client POSTs the form straight to S3 (moto's server): signed fields, then the file
    assert upload["upload"]["max_bytes"] >= len(big_png)
    put = post_form(upload, big_png)
    assert put.status_code in (200, 201, 204), put.text
    status, _, data = call(api, "GET", f"/results/{upload_id}")
    assert status == 202 and json.loads(data)["status"] == "processing"

    # 4. S3 -> SQS -> the S3 function (what Lambda's poller does)
    runs = local.pump(load_fn("s3_anonymize").lambda_handler)
    assert all(r["response"] == {"batchItemFailures": []} for r in runs)
    assert engine.calls["anonymize"] == 1

    # 5. the result: a presigned GET URL and the report
    status, _, data = call(api, "GET", f"/results/{upload_id}")
    assert status == 200
    result = json.loads(data)
    assert result["status"] == "done" and result["image"]["content_type"] == "image/png"
    assert result["report"]["options"] == {"face.effect": "pixelate", "targets": "face"}
    faces = [d for d in result["report"]["report"]["detections"] if d["label"] == "face"]
    assert faces and all(d["effect"] == "pixelate" for d in faces)
    image = requests.get(result["image"]["url"], timeout=30)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
    out = cv2.imdecode(np.frombuffer(image.content, np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == (1600, 1600, 3)


def test_failed_upload_reports_why(api, load_fn, local, engine):
    status, _, data = call(api, "POST", "/uploads")
    upload = json.loads(data)
    put = post_form(upload, b"definitely not an image")
    assert put.status_code in (200, 201, 204)
    runs = local.pump(load_fn("s3_anonymize").lambda_handler)
    assert runs and all(r["response"] == {"batchItemFailures": []} for r in runs)  # refused for good, no retry
    status, _, data = call(api, "GET", f"/results/{upload['id']}")
    assert status == 422
    body = json.loads(data)
    assert body["status"] == "failed" and body["error"] == "invalid_image" and body["message"]
    listing = local.client("s3").list_objects_v2(Bucket=local.names.output_bucket)
    assert [o["Key"] for o in listing["Contents"]] == [f"uploads/{upload['id']}.report.json"]  # no image


def test_unknown_results_and_routes(api, engine):
    assert call(api, "GET", "/results/0123456789abcdef0123456789abcdef")[0] == 404
    assert call(api, "GET", "/results/..%2F..%2Fetc")[0] == 404
    status, _, data = call(api, "DELETE", "/anonymize")
    assert status == 404 and json.loads(data)["error"] == "not_found"


def test_openapi_document(api, engine):
    status, headers, data = call(api, "GET", "/openapi.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(data)
    assert doc["servers"] == [{"url": "https://abc123.execute-api.eu-west-1.amazonaws.com/local"}]
    assert "413" in doc["paths"]["/anonymize"]["post"]["responses"]


def test_local_http_server_like_curl(engine, astronaut_jpeg, local):
    """`anonymize serve`: curl --data-binary @face.jpg -H 'Content-Type: image/jpeg' .../anonymize?effect=pixelate"""
    with LocalApi(port=0, worker_interval=0) as server:
        request = urllib.request.Request(
            server.url + "/anonymize?effect=pixelate",
            data=astronaut_jpeg,
            headers={"Content-Type": "image/jpeg"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "image/jpeg"
            data = response.read()
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (512, 512, 3)

        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(
                urllib.request.Request(server.url + "/anonymize?effect=nope", data=astronaut_jpeg, method="POST")
            )
        assert err.value.code == 400 and json.loads(err.value.read())["error"] == "invalid_options"

        # presigned flow through the local server, processed by its S3 worker
        with urllib.request.urlopen(urllib.request.Request(server.url + "/uploads", method="POST")) as response:
            upload = json.loads(response.read())
        assert upload["result"]["url"] == f"{server.url}/results/{upload['id']}"
        assert post_form(upload, astronaut_jpeg).status_code in (200, 201, 204)
        server.process_uploads()
        with urllib.request.urlopen(upload["result"]["url"]) as response:
            assert json.loads(response.read())["status"] == "done"
