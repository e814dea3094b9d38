"""The plate verifier: its card and model, and that it tells a labelled plate from plain road and sky."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest

from anonymizer.detection import MODELS_DIR, ModelCard, get_detector
from anonymizer.verification import Verifier, VerifierCard

CARD = MODELS_DIR / "plate-verifier.json"


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    return Verifier.load(CARD)


def test_the_plate_verifier_card_matches_its_model():
    card = VerifierCard.load(CARD)
    assert card.verifies == "plate" and 0 <= card.threshold < 1 and card.weight >= 0
    assert hashlib.sha256((MODELS_DIR / card.file).read_bytes()).hexdigest() == card.sha256
    assert (MODELS_DIR / card.file).stat().st_size < 5_000_000  # small: verifier 5 = verifier 4 (2.2 MB) + box network


def test_the_plate_card_names_the_verifier_only_with_its_operating_point():
    """Shipped or not, the plate card and the verifier card agree: a named verifier comes with the
    detector threshold it was chosen with."""
    plate = ModelCard.load("plate")
    if plate.verifier is None:
        assert get_detector("plate").verifier is None
        return
    card = json.loads(CARD.read_text())
    assert plate.verifier == CARD.name and plate.threshold == card["operating_threshold"]
    assert get_detector("plate").verifier.card.verifies == "plate"


def _labelled_plates(shared_data, n: int = 6) -> list[tuple[np.ndarray, tuple]]:
    """The first ``n`` web-cars images with one clear plate (40-300 px wide) and that plate's box."""
    root = shared_data / "plates" / "web-cars"
    coco = json.loads((root / "annotations.json").read_text())
    boxes: dict[int, list] = {}
    for a in coco["annotations"]:
        if a["category_id"] == 2:
            boxes.setdefault(a["image_id"], []).append(a["bbox"])
    out = []
    for im in sorted(coco["images"], key=lambda i: i["id"]):
        found = boxes.get(im["id"], [])
        if len(found) == 1 and 40 <= found[0][2] <= 300:
            x, y, w, h = found[0]
            out.append((cv2.imread(str(root / im["file_name"])), (x, y, x + w, y + h)))
        if len(out) == n:
            break
    return out


def test_a_labelled_plate_passes_and_plain_road_and_sky_do_not(verifier, shared_data):
    plates = _labelled_plates(shared_data)
    assert len(plates) == 6
    probs = np.array([verifier.probabilities(image, [box])[0] for image, box in plates])
    floor = verifier.card.threshold  # under it a proposal is dropped whatever the detector says
    assert (probs >= floor).all() and (probs >= 0.5).sum() >= len(probs) - 1, probs
    rng = np.random.RandomState(0)
    sky = np.tile(np.linspace(255, 170, 400)[:, None, None], (1, 600, 1)) * np.array([1.0, 0.85, 0.6])
    road = np.clip(rng.normal(100, 12, (400, 600, 1)), 0, 255) * np.ones(3)
    scene = np.vstack([sky, road]).astype(np.uint8)  # blue-grey sky over grey asphalt (BGR)
    empty = [(100, 100, 220, 140), (300, 150, 400, 175), (100, 550, 220, 590), (350, 650, 470, 680)]
    assert (verifier.probabilities(scene, empty) < 0.5).all()


def test_the_box_head_moves_an_offset_box_back_onto_the_plate(verifier, shared_data):
    """Verifier 5 refines: a box a quarter of a plate off (IoU about 0.4, a miss at 0.5) comes back."""
    from anonymizer_local.evaluation import iou_matrix

    assert verifier.card.refine > 0
    before, after = [], []
    for image, (x1, y1, x2, y2) in _labelled_plates(shared_data):
        w, h = x2 - x1, y2 - y1
        off = (x1 + 0.2 * w, y1 - 0.2 * h, x2 + 0.2 * w, y2 - 0.2 * h)
        _, moved = verifier.check(image, [off])
        truth = np.float32([[x1, y1, x2, y2]])
        before.append(iou_matrix(np.float32([off]), truth)[0, 0])
        after.append(iou_matrix(moved, truth)[0, 0])
    assert max(before) < 0.6 and np.mean(after) > np.mean(before) + 0.15, (before, after)
    assert sum(a >= 0.5 for a in after) >= 5, after
