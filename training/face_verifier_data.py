"""Data for the face verifier: face-detector proposals on every labelled set, labelled and split.

Why proposals and not just labelled boxes: the verifier sees exactly what the detector hands
it in production (its boxes, its box convention), so it is trained on the detector's own
proposals — true faces from ``faces/street-masks-dev`` and, as negatives, what it fires on in
car photos (``plates/*``) and on street photos away from any labelled face.

Splits (duplicate-aware, ``dhash`` of training/plates_data.py):
- street-masks-dev: even ids train, odd ids validate (face.md: the odd ids never tuned anything);
  an even-id image within ``NEAR_BITS`` of an odd-id one is dropped from training.
- romania-dashcam: by video; the held-out night video and the threshold video validate.
- web-cars: the held-out ids of training/splits.json validate (copies in training dropped).
- openimages-dev: odd ids validate (one copy per Open Images id; near copies dropped from training).
The validation ids are frozen in ``face_verifier_splits.json`` (the plate splits may move on).

Proposals are cached (``--cache``, outside the repository: they derive from the data sets).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from anonymizer.detection import CenterNetDetector, ModelCard
from anonymizer_local.evaluation import iou_matrix, load_coco

from .plates_data import dhash

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPLITS = Path(__file__).resolve().parent / "splits.json"
FROZEN = Path(__file__).resolve().parent / "face_verifier_splits.json"  # this verifier's splits, frozen
CACHE = Path("/tmp/anonymizer-face-verifier")
SOURCES = {
    "street": "faces/street-masks-dev",
    "web-cars": "plates/web-cars",
    "dashcam": "plates/romania-dashcam",
    "openimages": "plates/openimages-dev",
}
CAR_SOURCES = ("web-cars", "dashcam", "openimages")
PROPOSAL_FLOOR = 0.05  # the lowest score `anonymize eval` asks for (AP50 sees the whole curve)
NEAR_BITS = 20  # dhash bits under which two images are taken as copies (web-cars: copies 0, others 90+)
POSITIVE_IOU = 0.4  # a proposal this close to a labelled face is a face
NEGATIVE_IOU = 0.1  # ... this far from every labelled face (and not inside one) is not
CAR_FACES = Path(__file__).resolve().parent / "car_faces.json"  # the audit of the car photos, by eye
REAL_IOU = 0.3  # a box this close to an audited box is that box


def proposal_detector(label: str = "face") -> CenterNetDetector:
    """Today's detector of ``label`` without any verifier: what the second stage gets to see."""
    return CenterNetDetector(replace(ModelCard.load(label), verifier=None), threads=1)


def validation_ids(source: str, items=None) -> set[int]:
    """Image ids of ``source`` kept for validation (never trained on), as frozen in ``FROZEN``."""
    if FROZEN.exists():
        return set(json.loads(FROZEN.read_text())["val_image_ids"][source])
    if source in ("street", "openimages"):
        return {it.image_id for it in items if it.image_id % 2 == 1}
    splits = json.loads(SPLITS.read_text())  # the plate splits of commit 485d58a (first freeze)
    if source == "dashcam":
        d = splits["romania-dashcam"]
        return set(d["holdout_image_ids"]) | set(d["threshold_image_ids"])
    return set(splits["web-cars"]["holdout_image_ids"])


def near_copies(items, val: set[int]) -> set[int]:
    """Training ids with a near copy among the validation images (dropped from training)."""
    hashes = {it.image_id: dhash(str(it.path)) for it in items}
    held = np.array([hashes[i] for i in sorted(val)]) if val else np.zeros((0, 256), bool)
    return {i for i, h in hashes.items() if i not in val and len(held) and (held != h).sum(1).min() <= NEAR_BITS}


def make_proposals(cache: Path = CACHE) -> None:
    """Run the detector on every image of every source, write ``<source>.json`` in ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    detector = proposal_detector()
    for source, folder in SOURCES.items():
        out = cache / f"{source}.json"
        if out.exists():
            continue
        items = load_coco(DATA / folder)
        val = validation_ids(source, items)
        dropped = near_copies(items, val)
        t0, records = time.perf_counter(), []
        for it in items:
            image = cv2.imread(str(it.path))
            dets = detector.detect(image, PROPOSAL_FLOOR)
            split = "val" if it.image_id in val else ("drop" if it.image_id in dropped else "train")
            records.append(
                {
                    "id": it.image_id,
                    "path": str(it.path),
                    "split": split,
                    "faces": it.boxes.get("face", np.zeros((0, 4))).tolist(),
                    "boxes": [list(d.box) for d in dets],
                    "scores": [d.score for d in dets],
                }
            )
        out.write_text(json.dumps(records))
        n = sum(len(r["boxes"]) for r in records)
        print(f"{source}: {len(items)} images, {n} proposals, {len(dropped)} near copies dropped, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip


def audited(kind: str) -> dict[str, np.ndarray]:
    """Audited boxes in the car sets, ``kind`` "faces" (real people) or "unsure" (too small or
    blurred to tell, faces on posters): ``<set folder>/<file name>`` -> N x 4 (x1, y1, x2, y2)."""
    data = json.loads(CAR_FACES.read_text()).get(kind, {}) if CAR_FACES.exists() else {}
    return {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in data.items()}


def near(boxes: np.ndarray, marked: np.ndarray | None, iou: float = REAL_IOU) -> np.ndarray:
    """A flag per box: True when it is one of the ``marked`` boxes (IoU >= ``iou``)."""
    if marked is None or not len(marked) or not len(boxes):
        return np.zeros(len(boxes), bool)
    return iou_matrix(boxes, marked).max(1) >= iou


def load_proposals(source: str, cache: Path = CACHE) -> list[dict]:
    return json.loads((cache / f"{source}.json").read_text())


def label_proposals(record: dict) -> np.ndarray:
    """Per proposal: 1 face, 0 not a face, -1 unsure (neither close to nor clear of a labelled face)."""
    boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
    faces = np.asarray(record["faces"], np.float32).reshape(-1, 4)
    if not len(faces):
        return np.zeros(len(boxes), np.int64)
    iou = iou_matrix(boxes, faces).max(1)
    labels = np.full(len(boxes), -1, np.int64)
    labels[iou >= POSITIVE_IOU] = 1
    labels[iou < NEGATIVE_IOU] = 0
    return labels


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=CACHE)
    make_proposals(parser.parse_args().cache)
