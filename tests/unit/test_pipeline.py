"""The pipeline on a real face: found, hidden, published clean, and never published on failure."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from anonymizer import imageio
from anonymizer.detection import get_detector
from anonymizer.errors import DetectionError, InvalidImageError
from anonymizer.options import parse_options
from anonymizer.pipeline import Anonymizer, expand_box

FACE_ONLY = {"targets": "face"}


@pytest.fixture(scope="module")
def anonymizer():
    return Anonymizer()


def _identity_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of high-passed 32x32 grey crops: features, not the coarse layout (see test_effects)."""

    def prep(x):
        g = cv2.resize(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        return (g - cv2.GaussianBlur(g, (0, 0), 2)).ravel()

    return float(np.corrcoef(prep(a), prep(b))[0, 1])


@pytest.mark.parametrize("effect", ["blur", "pixelate", "fill", "deform", "logo"])
def test_each_effect_makes_the_face_undetectable_and_unlike_the_original(anonymizer, astronaut_jpeg, effect):
    logo = cv2.imencode(".png", np.full((40, 80, 4), 200, np.uint8))[1].tobytes()
    result = anonymizer.anonymize(astronaut_jpeg, parse_options({**FACE_ONLY, "effect": effect}, logo=logo))
    assert result.report["counts"] == {"face": 1}
    original = imageio.decode(astronaut_jpeg).pixels
    output = imageio.decode(result.data).pixels
    x1, y1, x2, y2 = (int(v) for v in result.report["detections"][0]["box"])
    # 1) the same detector, even at a low threshold, no longer finds a face there
    again = get_detector("face").detect(output, threshold=0.3)
    assert not [d for d in again if abs((d.box[0] + d.box[2]) / 2 - (x1 + x2) / 2) < (x2 - x1) / 2], again
    # 2) identity-level structure is gone (0.5 = where facial features disappear, see test_effects)
    assert _identity_similarity(original[y1:y2, x1:x2], output[y1:y2, x1:x2]) < 0.5


def test_report_says_what_was_done(anonymizer, astronaut_jpeg):
    report = anonymizer.anonymize(astronaut_jpeg, parse_options(FACE_ONLY)).report
    det = report["detections"][0]
    assert det["label"] == "face" and det["effect"] == "blur" and 0 < det["score"] <= 1
    assert det["region"][0] <= det["box"][0] and det["region"][2] >= det["box"][2]
    assert report["models"]["face"].startswith("centerface")
    assert {"decode", "detect_face", "effects", "encode", "total"} <= set(report["timings_ms"])
    assert report["output"]["format"] == "jpeg"


def test_only_the_regions_change(anonymizer, astronaut_bgr):
    png = cv2.imencode(".png", astronaut_bgr)[1].tobytes()
    result = anonymizer.anonymize(png, parse_options(FACE_ONLY))
    out = imageio.decode(result.data).pixels
    changed = np.any(out != astronaut_bgr, axis=2)
    assert changed.any()
    for det in result.report["detections"]:
        x1, y1, x2, y2 = det["region"]
        changed[y1:y2, x1:x2] = False
    assert not changed.any()


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "bmp", "tiff"])
def test_every_output_format_is_clean_of_metadata(anonymizer, astronaut_jpeg, fmt):
    result = anonymizer.anonymize(astronaut_jpeg, parse_options({**FACE_ONLY, "format": fmt}))
    assert result.format == fmt and result.content_type == imageio.CONTENT_TYPES[fmt]
    assert imageio.metadata_markers(result.data) == []


def test_alpha_is_kept(anonymizer, astronaut_bgr):
    alpha = np.full(astronaut_bgr.shape[:2], 200, np.uint8)
    png = cv2.imencode(".png", np.dstack([astronaut_bgr, alpha]))[1].tobytes()
    result = anonymizer.anonymize(png, parse_options(FACE_ONLY))
    decoded = imageio.decode(result.data)
    assert decoded.alpha is not None and (decoded.alpha == 200).all()


def test_broken_detector_fails_closed(astronaut_jpeg):
    def broken(label):
        raise RuntimeError("model file unreadable")

    with pytest.raises(DetectionError):
        Anonymizer(broken).anonymize(astronaut_jpeg, parse_options(FACE_ONLY))


def test_detector_crashing_mid_run_fails_closed(astronaut_jpeg):
    class Crashing:
        card = get_detector("face").card

        def detect(self, *args):
            raise DetectionError("face detector failed to run")

    with pytest.raises(DetectionError):
        Anonymizer(lambda label: Crashing()).anonymize(astronaut_jpeg, parse_options(FACE_ONLY))


def test_bad_bytes_are_a_clear_error(anonymizer):
    with pytest.raises(InvalidImageError):
        anonymizer.anonymize(b"definitely not an image", parse_options(FACE_ONLY))


def test_expand_box_grows_and_clips():
    assert expand_box((10, 10, 30, 50), 0.1, 100, 100) == (8, 6, 32, 54)
    assert expand_box((0, 0, 100, 100), 0.5, 100, 100) == (0, 0, 100, 100)


# --- the typed report and its one schema ------------------------------------------------------

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "report.schema.json"


def test_reports_follow_the_documented_schema_and_show_the_thresholds_used(anonymizer, astronaut_jpeg):
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    card = get_detector("face").card.threshold
    anonymized = anonymizer.anonymize(astronaut_jpeg, parse_options(FACE_ONLY))
    detected = anonymizer.detect(astronaut_jpeg, parse_options({"targets": "face", "face.threshold": "0.3"}))
    floor = anonymizer.detect(astronaut_jpeg, parse_options(FACE_ONLY), min_score=0.05)
    for report in (anonymized.report, detected, floor):
        jsonschema.validate(json.loads(json.dumps(report)), schema)  # as JSON, the way clients read it
    assert anonymized.report["thresholds"] == {"face": card} == {"face": anonymized.details.thresholds["face"]}
    assert anonymized.report["options"]["face"]["threshold"] == card  # no longer null
    assert detected["thresholds"] == {"face": 0.3} and floor["thresholds"] == {"face": 0.05}
    assert all(d["score"] >= 0.3 for d in detected["detections"])
    assert "output" not in detected and "region" not in detected["detections"][0]
    # the typed structure and its JSON form say the same
    details = anonymized.details
    assert details.counts == anonymized.report["counts"] == {"face": 1}
    assert (
        details.detections[0].effect == "blur"
        and list(details.detections[0].region) == anonymized.report["detections"][0]["region"]
    )
    assert details.output is not None and details.output.bytes == len(anonymized.data)


def test_grey_input_comes_out_grey(anonymizer, astronaut_bgr):
    grey = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)
    for ext in (".jpg", ".png"):
        result = anonymizer.anonymize(cv2.imencode(ext, grey)[1].tobytes(), parse_options(FACE_ONLY))
        out = cv2.imdecode(np.frombuffer(result.data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert out.ndim == 2 and result.report["image"]["grey"] is True, ext
        best = max(result.report["detections"], key=lambda d: d["score"])  # the face is still found and hidden
        x1, y1, x2, y2 = best["region"]
        assert not np.array_equal(out[y1:y2, x1:x2], grey[y1:y2, x1:x2])


@pytest.mark.parametrize("fmt", ["heic", "avif"])
def test_heic_and_avif_photos_with_gps_come_out_as_jpeg_without_it(anonymizer, astronaut_bgr, fmt):
    from badinput import make_heif

    data = make_heif(astronaut_bgr, fmt)
    assert "gps" in imageio.metadata_markers(data)
    result = anonymizer.anonymize(data, parse_options(FACE_ONLY))
    assert result.format == "jpeg" and result.content_type == "image/jpeg"
    assert imageio.metadata_markers(result.data) == [] and b"GPS" not in result.data
    assert result.report["image"]["format"] == fmt and result.report["counts"] == {"face": 1}
    out = imageio.decode(result.data).pixels
    x1, y1, x2, y2 = result.report["detections"][0]["region"]
    assert _identity_similarity(out[y1:y2, x1:x2], astronaut_bgr[y1:y2, x1:x2]) < 0.5
