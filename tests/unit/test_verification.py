"""The second stage: crops with context, the verifier card and network, and the detector's hook."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from anonymizer.detection import MODELS_DIR, CenterNetDetector, Detection, ModelCard, get_detector
from anonymizer.errors import DetectionError
from anonymizer.verification import (
    Verifier,
    VerifierCard,
    crop_with_context,
    crops_blob,
    refined_boxes,
    verified_scores,
)


def test_crop_is_centred_on_the_box_with_its_context():
    image = np.zeros((200, 300, 3), np.uint8)
    image[80:120, 130:170] = 255  # a 40 px white square
    crop = crop_with_context(image, (130, 80, 170, 120), 48, 2.0)  # 80 px around it -> 48 px
    assert crop.shape == (48, 48, 3)
    assert crop[14:34, 14:34].min() == 255  # the box fills the middle half
    assert crop[:10].max() == 0 and crop[:, :10].max() == 0  # the context around it is dark


def test_crop_outside_the_image_is_black_and_a_huge_box_is_averaged():
    image = np.full((100, 100, 3), 200, np.uint8)
    corner = crop_with_context(image, (-10, -10, 10, 10), 40, 2.0)  # centred on the corner
    assert corner[:18, :18].max() == 0 and corner[-15:, -15:].min() == 200
    stripes = np.zeros((2000, 2000, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: aliasing would show them, averaging gives grey
    big = crop_with_context(stripes, (500, 500, 1500, 1500), 48, 1.0)
    assert 100 < big.mean() < 155 and big.std() < 20


def test_crops_blob_is_rgb_nchw_in_0_1():
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    blob = crops_blob(image, [(16, 16, 48, 48), (0, 0, 64, 64)], 32, 1.0)
    assert blob.shape == (2, 3, 32, 32) and blob.dtype == np.float32
    assert blob[:, 2].min() == 1.0 and blob[:, :2].max() == 0.0


@pytest.fixture(scope="module")
def face_card() -> ModelCard:
    card = ModelCard.load("face")
    assert card.verifier, "face.json names its verifier"
    return card


@pytest.fixture(scope="module")
def verifier(face_card) -> Verifier:
    return Verifier.load(MODELS_DIR / face_card.verifier)


def test_the_verifier_card_matches_the_shipped_model(face_card):
    card = VerifierCard.load(MODELS_DIR / face_card.verifier)
    assert card.verifies == "face" and 0 <= card.threshold < 1 and card.weight >= 0
    assert hashlib.sha256((MODELS_DIR / card.file).read_bytes()).hexdigest() == card.sha256
    assert (MODELS_DIR / card.file).stat().st_size < 1_000_000  # a small model


def test_the_verifier_confirms_a_real_face_and_rejects_plain_texture(verifier, astronaut_bgr):
    best = max(get_detector("face").detect(astronaut_bgr), key=lambda d: d.score)
    assert verifier.probabilities(astronaut_bgr, [best.box])[0] >= 0.5
    flat = np.full((512, 512, 3), 128, np.uint8)
    assert (verifier.probabilities(flat, [(20, 20, 80, 80), (400, 400, 460, 460)]) < 0.5).all()


def test_scores_are_weighted_by_the_probability_and_cut_under_the_floor():
    scores, probs = np.array([0.8, 0.8, 0.5, 0.3], np.float32), np.array([1.0, 0.25, 0.04, 0.9], np.float32)
    assert verified_scores(scores, probs, 0.5, 0.05) == pytest.approx([0.8, 0.4, 0.0, 0.3 * 0.9**0.5])
    assert verified_scores(scores, probs, 0.0, 0.3) == pytest.approx([0.8, 0.0, 0.0, 0.3])  # a pure gate


def test_a_changed_model_file_or_a_broken_card_fails_closed(tmp_path, face_card):
    card = json.loads((MODELS_DIR / face_card.verifier).read_text())
    shutil.copy(MODELS_DIR / card["file"], tmp_path / card["file"])
    (tmp_path / "v.json").write_text(json.dumps({**card, "sha256": "0" * 64}))
    with pytest.raises(DetectionError, match="does not match its card"):
        Verifier.load(tmp_path / "v.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DetectionError, match="malformed"):
        Verifier.load(tmp_path / "bad.json")
    with pytest.raises(DetectionError, match="malformed"):
        Verifier.load(tmp_path / "missing.json")


def test_a_verifier_that_cannot_run_stops_the_image(verifier, astronaut_bgr):
    class Broken:
        def run(self, *args):
            raise RuntimeError("onnxruntime fell over")

    broken = object.__new__(Verifier)
    broken.card, broken.session = verifier.card, Broken()
    with pytest.raises(DetectionError, match="face verifier failed"):
        broken.probabilities(astronaut_bgr, [(10, 10, 50, 50)])


def test_the_detector_keeps_only_what_its_verifier_confirms(astronaut_bgr, face_card):
    plain = CenterNetDetector(replace(face_card, verifier=None))
    proposals = plain.detect(astronaut_bgr, 0.05)
    verified = get_detector("face").detect(astronaut_bgr, 0.05)
    assert plain.verifier is None and get_detector("face").verifier is not None
    rescored, _ = get_detector("face").verifier.verify(
        astronaut_bgr, [d.box for d in proposals], [d.score for d in proposals]
    )
    expected = [replace(d, score=float(v)) for d, v in zip(proposals, rescored, strict=True) if v >= 0.05]
    assert verified == expected  # same boxes, rescored, those under the threshold gone
    assert [d.box for d in get_detector("face").detect(astronaut_bgr)] == [proposals[0].box]  # one face


def test_a_confident_box_on_no_face_is_dropped(astronaut_bgr):
    """What the stage is for: the detector's score alone does not put a box through."""
    face = max(get_detector("face").detect(astronaut_bgr), key=lambda d: d.score)
    shuttle = Detection("face", 0.9, (420.0, 40.0, 500.0, 120.0))  # the model space shuttle, top right
    stripes = Detection("face", 0.9, (30.0, 300.0, 90.0, 360.0))  # the flag's stripes, left
    kept = get_detector("face").verify(astronaut_bgr, [face, shuttle, stripes], get_detector("face").card.threshold)
    assert [d.box for d in kept] == [face.box] and kept[0].score <= face.score


def test_verify_passes_everything_through_without_a_verifier(face_card):
    plain = CenterNetDetector(replace(face_card, verifier=None))
    dets = [Detection("face", 0.3, (1.0, 2.0, 30.0, 40.0))]
    assert plain.verify(np.zeros((50, 50, 3), np.uint8), dets, 0.5) == dets


def test_a_wide_crop_keeps_a_wide_box_at_its_width():
    """A plate verifier's crop: ``aspect`` 0.5 gives a 2:1 crop, ``context`` times the box wide."""
    image = np.zeros((200, 300, 3), np.uint8)
    image[90:110, 110:190] = 255  # an 80 x 20 px white "plate"
    crop = crop_with_context(image, (110, 90, 190, 110), 96, 2.0, 0.5)  # 160 x 80 px around it -> 96 x 48
    assert crop.shape == (48, 96, 3)
    assert crop[20:28, 26:70].min() == 255 and crop[:, :20].max() == 0 and crop[:14].max() == 0
    tall = crop_with_context(image, (140, 60, 160, 140), 96, 2.0, 0.5)  # 20 x 80: the height decides, 320 x 160 px
    assert tall.shape == (48, 96, 3) and tall[22:26, 38:58].min() == 255 and tall[:, :2].max() == 0  # x from -10
    assert crops_blob(image, [(110, 90, 190, 110)], 96, 2.0, 0.5).shape == (1, 3, 48, 96)


def test_refined_boxes_move_each_edge_by_its_delta_and_stay_boxes():
    boxes = np.float32([[10, 20, 50, 30], [0, 0, 10, 10]])
    deltas = np.float32([[0.1, -0.5, -0.25, 0.2], [3.0, 0.0, -3.0, 0.0]])  # the second: clipped to +-1
    moved = refined_boxes(boxes, deltas)
    assert moved[0] == pytest.approx([14, 15, 40, 32])
    assert refined_boxes(boxes, deltas, 0.5)[0] == pytest.approx([12, 17.5, 45, 31])  # half the way
    assert moved[1][2] - moved[1][0] == pytest.approx(1.0)  # left +10, right -10: kept 1 px wide
    assert refined_boxes(boxes[:0], deltas[:0]).shape == (0, 4)


class MovingVerifier:
    """A verifier whose box head moves every proposal onto one spot; probabilities as given."""

    def __init__(self, probs, spot):
        self.card = VerifierCard("plate", "x.onnx", "x", "0", 0.2, 1.0, 96, 2.0, 0.5, refine=1.0)
        self.probs, self.spot = np.float32(probs), spot

    def verify(self, image, boxes, scores):
        moved = np.float32([self.spot] * len(boxes))
        return verified_scores(np.float32(scores), self.probs, 1.0, 0.2), moved


def test_a_refining_verifier_moves_boxes_and_one_nms_merges_those_that_meet():
    card = ModelCard.load("plate")
    detector = CenterNetDetector(replace(card, verifier=None))
    detector.verifier = MovingVerifier([0.9, 0.8, 0.1], (100.0, 50.0, 160.0, 70.0))
    dets = [
        Detection("plate", 0.8, (95.0, 48.0, 150.0, 66.0)),
        Detection("plate", 0.7, (104.0, 52.0, 170.0, 74.0)),
        Detection("plate", 0.9, (300.0, 50.0, 360.0, 70.0)),  # rejected by the verifier (0.1 < 0.2)
    ]
    kept = detector.verify(np.zeros((120, 400, 3), np.uint8), dets, 0.3)
    assert [(d.box, round(d.score, 3)) for d in kept] == [((100.0, 50.0, 160.0, 70.0), 0.72)]
