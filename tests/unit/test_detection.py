import json
import shutil

import cv2
import numpy as np
import pytest

from anonymizer.detection import (
    MODELS_DIR,
    CenterNetDetector,
    ModelCard,
    Pass,
    _spans,
    decode,
    get_detector,
    nms,
    run_plan,
    working_scale,
)
from anonymizer.errors import DetectionError


def test_working_scale_upscales_small_and_caps_large_images():
    assert working_scale(400, 300, 800, 1280) == pytest.approx(2.0)  # the face card uses 1024
    assert working_scale(100, 100, 800, 1280) == pytest.approx(3.0)  # capped upscale
    assert working_scale(1000, 700, 800, 1280) == 1.0
    assert working_scale(4000, 3000, 800, 1280) == pytest.approx(0.32)


def test_decode_finds_a_single_peak_with_its_size_and_offset():
    heat = np.zeros((20, 30), np.float32)
    heat[10, 15] = 0.9
    heat[10, 16] = 0.5  # a neighbour of the peak, not a peak itself
    size = np.zeros((2, 20, 30), np.float32)
    size[:, 10, 15] = np.log([8.0, 4.0])  # height 32 px, width 16 px
    offset = np.zeros((2, 20, 30), np.float32)
    boxes, scores = decode(heat, size, offset, 0.3)
    assert scores.tolist() == pytest.approx([0.9])
    cx, cy = (15 + 0.5) * 4, (10 + 0.5) * 4
    assert boxes[0].tolist() == pytest.approx([cx - 8, cy - 16, cx + 8, cy + 16])


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.4) == [1, 2]


def test_face_detector_finds_the_astronaut(astronaut_bgr):
    """One real face, found with confidence. (The int8 model calibrated jointly with the plate
    branch also returns one weak 0.16 box on the suit, just above the recall-first threshold.)"""
    found = get_detector("face").detect(astronaut_bgr)
    assert len(found) <= 2 and all(d.score < 0.2 for d in found[1:])
    x1, y1, x2, y2 = found[0].box
    assert 150 < (x1 + x2) / 2 < 260 and 80 < (y1 + y2) / 2 < 170
    assert found[0].score > 0.5


def test_small_faces_in_a_large_photo_are_found_by_the_fine_pass(astronaut_bgr):
    """~20 px faces in a 4000 px photo: the global pass alone shrinks them to ~6 px, below what the model sees."""
    canvas = np.full((3000, 4000, 3), 120, np.uint8)
    face = astronaut_bgr[40:200, 150:290]  # 140 x 160 crop around the face
    small = cv2.resize(face, (32, 37), interpolation=cv2.INTER_AREA)  # the face itself is ~20 px wide
    spots = [(500, 400), (2100, 1300), (3500, 2600)]
    for x, y in spots:
        canvas[y : y + 37, x : x + 32] = small
    detector = get_detector("face")
    found = detector.detect(canvas)
    centres = [((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in found]
    for x, y in spots:
        assert any(abs(cx - (x + 16)) < 15 and abs(cy - (y + 18)) < 15 for cx, cy in centres), (x, y, centres)
    [(boxes, _)] = run_plan(
        canvas,
        [(Pass(1280 / 4000, 0, 0, 4000, 3000), ("face",))],
        detector.run_jobs,
        {"face": detector.card},
        {"face": 0.15},
    )["face"]
    assert len(boxes) < len(spots)  # the global pass alone loses some (6 px faces: at best borderline scores)


def test_a_model_that_does_not_match_its_card_is_refused(tmp_path):
    shutil.copy(MODELS_DIR / "face-int8.onnx", tmp_path / "face-int8.onnx")
    card = json.loads((MODELS_DIR / "face.json").read_text())
    card["sha256"] = "0" * 64
    (tmp_path / "face.json").write_text(json.dumps(card))
    with pytest.raises(DetectionError, match="does not match"):
        CenterNetDetector(ModelCard.load("face", tmp_path), models_dir=tmp_path)


def test_a_missing_model_is_a_detection_error(tmp_path):
    card = json.loads((MODELS_DIR / "face.json").read_text())
    (tmp_path / "face.json").write_text(json.dumps(card))
    with pytest.raises(DetectionError, match="missing"):
        CenterNetDetector(ModelCard.load("face", tmp_path), models_dir=tmp_path)


@pytest.mark.parametrize("length,side,overlap", [(1920, 960, 48), (4000, 960, 48), (961, 960, 48), (500, 960, 48)])
def test_tiles_cover_the_image_with_overlap_and_no_slivers(length, side, overlap):
    spans = _spans(length, side, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    sizes = {b - a for a, b in spans}
    assert max(sizes) <= side and max(sizes) - min(sizes) <= 1
    for (_, a1), (b0, _) in zip(spans, spans[1:], strict=False):
        assert a1 - b0 >= overlap  # neighbours overlap by at least `overlap`


@pytest.mark.parametrize(("canvas_hw", "side"), [((1080, 1920), 1080), ((3000, 4000), 2800)])
def test_large_faces_in_large_images_are_found_by_the_coarse_pass(astronaut_bgr, canvas_hw, side):
    """Faces of 240-620 px: too big for the native-scale tiles, found by the coarse pass."""
    canvas = np.full((*canvas_hw, 3), 100, np.uint8)
    canvas[:side, :side] = cv2.resize(astronaut_bgr, (side, side), interpolation=cv2.INTER_AREA)
    found = get_detector("face").detect(canvas)
    face_x, face_y = 220 / 512 * side, 120 / 512 * side  # the astronaut's face centre
    assert any(abs((d.box[0] + d.box[2]) / 2 - face_x) < side * 0.1 and abs((d.box[1] + d.box[3]) / 2 - face_y)
               < side * 0.1 and d.box[2] - d.box[0] > side * 0.12 for d in found), found  # fmt: skip


@pytest.mark.parametrize(("size", "closeup"), [((960, 640), True), ((4000, 3000), True), ((400, 300), False)])
def test_closeup_pass_is_added_only_where_every_pass_sees_the_image_big(size, closeup):
    """A plate filling half of a car-listing photo is found by a pass at ``closeup_side``; images
    whose one pass runs that small already (here: upscaled only to 416 px) get no extra pass."""
    from dataclasses import replace

    base = CenterNetDetector(replace(get_detector("plate").card, closeup_side=None, min_side=416), MODELS_DIR)
    plain = base.plan(*size)
    base.card = replace(base.card, closeup_side=320)
    passes = base.plan(*size)
    extra = Pass(320 / max(size), 0, 0, *size)
    assert passes == ([*plain, extra] if closeup else plain)
