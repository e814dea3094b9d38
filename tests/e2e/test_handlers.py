"""Both Lambda handlers end to end on real photos from ../shared/data.

The S3 function runs exactly as `make demo` runs it: moto's HTTP server as S3, SQS and
DynamoDB, real S3 -> SQS notifications, the real handler. The API function gets real API
Gateway proxy events with binary bodies.
"""

from __future__ import annotations

import base64
import json

import pytest
from lambda_env import mock_lambda_env

from anonymizer import imageio
from anonymizer.detection import available_models
from anonymizer_local.emulator import FakeLambdaContext, api_event, load_function, run_local_s3_flow

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:No application metrics to publish")]
TARGETS = "face,plate" if "plate" in available_models() else "face"


@pytest.fixture(scope="module")
def photos(shared_data):
    faces = sorted((shared_data / "faces" / "street-masks-dev" / "images").glob("*.jpg"))[:2]
    dashcam = sorted((shared_data / "plates" / "romania-dashcam" / "images").glob("*.jpg"))[:1]
    cars = sorted((shared_data / "plates" / "web-cars" / "images").glob("*"))[:1]
    return faces + dashcam + cars


def test_s3_function_publishes_every_real_photo_anonymized(photos, tmp_path):
    summary = run_local_s3_flow(photos, tmp_path, {"targets": TARGETS}, quiet=True)
    assert summary["ok"] == len(photos) and summary["failed"] == 0, summary
    for entry in summary["objects"]:
        out = tmp_path / entry["key"]
        report = json.loads((tmp_path / (entry["key"] + ".report.json")).read_text())
        assert imageio.metadata_markers(out.read_bytes()) == []
        source = next(p for p in photos if p.name == entry["key"].rsplit("/", 1)[-1])
        assert imageio.decode(out.read_bytes()).pixels.shape == imageio.decode(source.read_bytes()).pixels.shape
        assert out.read_bytes() != source.read_bytes()
        if "street-masks" in str(source):
            assert report["counts"]["face"] >= 1, report


@pytest.fixture(scope="module")
def api():
    with mock_lambda_env(OUTPUT_BUCKET="e2e-out", UPLOAD_BUCKET="e2e-in", ANONYMIZER_TARGETS=TARGETS):
        yield load_function("api_anonymize")


def test_api_returns_the_anonymized_real_photo(api, photos):
    body = photos[0].read_bytes()
    event = api_event("POST", "/anonymize", headers={"Content-Type": "image/jpeg"}, body=body,
                      query={"effect": ["pixelate"]})  # fmt: skip
    response = api.lambda_handler(event, FakeLambdaContext())
    assert response["statusCode"] == 200, response.get("body", "")[:300]
    assert response["multiValueHeaders"]["Content-Type"] == ["image/jpeg"] and response["isBase64Encoded"]
    out = base64.b64decode(response["body"])
    assert imageio.decode(out).pixels.shape == imageio.decode(body).pixels.shape
    assert imageio.metadata_markers(out) == []


def test_api_json_detections_for_a_real_photo(api, photos):
    event = api_event("POST", "/anonymize", headers={"Content-Type": "image/jpeg"}, body=photos[0].read_bytes(),
                      query={"format": ["json"]})  # fmt: skip
    response = api.lambda_handler(event, FakeLambdaContext())
    assert response["statusCode"] == 200
    payload = json.loads(response["body"])
    report = payload.get("report", payload)
    assert any(d["label"] == "face" for d in report["detections"])


def test_api_rejects_a_truncated_real_photo_with_a_clear_message(api, photos):
    event = api_event("POST", "/anonymize", headers={"Content-Type": "image/jpeg"}, body=photos[0].read_bytes()[:3000])
    response = api.lambda_handler(event, FakeLambdaContext())
    assert response["statusCode"] == 400
    assert "truncated" in json.loads(response["body"])["message"]
