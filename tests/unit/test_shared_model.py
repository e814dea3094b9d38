"""The joint face+plate network: same answers as the separate models, one trunk pass fewer."""

import hashlib
import json

import cv2
import numpy as np
import pytest

from anonymizer.detection import (
    MODELS_DIR,
    Pass,
    SharedTrunkDetector,
    available_models,
    get_detector,
    get_shared_detector,
    shared_card,
)
from anonymizer.errors import DetectionError
from anonymizer.options import parse_options
from anonymizer.pipeline import Anonymizer

BOTH = frozenset({"face", "plate"})


@pytest.fixture(scope="module")
def street_frame(shared_data) -> np.ndarray:
    """A real dashcam frame (plates, pedestrians), upscaled to 1080p."""
    path = sorted((shared_data / "plates" / "romania-dashcam").rglob("*.jpg"))[0]
    return cv2.resize(cv2.imread(str(path)), (1920, 1080), interpolation=cv2.INTER_LINEAR)


def test_the_shared_card_matches_the_shipped_models():
    card = shared_card(BOTH)
    assert card is not None
    assert hashlib.sha256((MODELS_DIR / card["file"]).read_bytes()).hexdigest() == card["sha256"]
    for label in BOTH:
        member = json.loads((MODELS_DIR / f"{label}.json").read_text())
        assert card["members"][label]["sha256"] == member["sha256"], f"run tools/build_shared_model.py ({label})"
    assert available_models() == ["face", "plate"]  # the joint card is not a model of its own


def test_1080p_face_and_plate_plans_share_the_native_pass():
    face, plate = get_detector("face").plan(1920, 1080), get_detector("plate").plan(1920, 1080)
    native = Pass(1.0, 0, 0, 1920, 1080, screened=True)  # screened at a third of the scale first
    assert native in face and native in plate
    assert len(face) == 2  # + the coarse pass for faces too big for the native one


@pytest.mark.parametrize("size", [(2560, 1440), (4000, 3000), (6000, 4000)])
def test_large_photos_run_every_pass_through_the_joint_network(size):
    """Both policies look for 15-20 px objects at native scale in the same tiles, plus one coarse pass;
    plates add only their close-up pass (a small one, on the plate network alone)."""
    face, plate = set(get_detector("face").plan(*size)), set(get_detector("plate").plan(*size))
    closeup = get_detector("plate").card.closeup_side
    assert plate - face == {Pass(closeup / max(size), 0, 0, *size)} and face <= plate


@pytest.mark.parametrize("size", [(1920, 1080), (1280, 720), (400, 300), (4000, 3000)])
def test_shared_trunk_gives_exactly_the_separate_models_answers(street_frame, size):
    image = cv2.resize(street_frame, size, interpolation=cv2.INTER_AREA)
    joint = get_shared_detector(BOTH).detect(image, {"face": (0.05, None), "plate": (0.05, None)})
    for label in BOTH:
        assert joint[label] == get_detector(label).detect(image, 0.05), label
    assert joint["plate"], "the frame has plates: the comparison must not be vacuous"


def test_the_pipeline_uses_the_shared_trunk_and_says_so(street_frame):
    ok, jpeg = cv2.imencode(".jpg", street_frame)
    report = Anonymizer().detect(jpeg.tobytes(), parse_options({"targets": "face,plate"}))
    assert "detect_face+plate" in report["timings_ms"]
    assert report["models"]["shared"].startswith("face-plate-int8.onnx@")
    one = Anonymizer().detect(jpeg.tobytes(), parse_options({"targets": "plate"}))
    assert "shared" not in one["models"] and "detect_plate" in one["timings_ms"]
    assert [d for d in report["detections"] if d["label"] == "plate"] == one["detections"]


def test_a_custom_detector_factory_runs_each_model_on_its_own(street_frame):
    calls = []

    def factory(label):
        calls.append(label)
        return get_detector(label)

    report = Anonymizer(factory).detect_pixels(street_frame, parse_options({"targets": "face,plate"}))
    assert report and set(calls) == set(BOTH)


def test_a_joint_model_built_from_other_members_is_refused():
    card = dict(shared_card(BOTH))
    card["members"] = {**card["members"], "plate": {"sha256": "0" * 64}}
    with pytest.raises(DetectionError, match="not built from this plate model"):
        SharedTrunkDetector(card, {label: get_detector(label) for label in BOTH})
