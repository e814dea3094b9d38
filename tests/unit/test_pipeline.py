"""The pipeline on a real face: found, hidden, published clean, and never published on failure."""

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
