"""False face boxes per image on photos of cars, and crops of every box for an audit by eye.

Why: the car sets carry plate labels only, so a face box there is false unless it is one of the
real people that an audit found (``training/car_faces.json``: file name -> boxes, by eye). The
figure the product promises is at most 0.1 false face boxes per car photo at the operating point.

    python tools/face_false_positives.py                       # all car photos, shipped models
    python tools/face_false_positives.py --split val --crops /tmp/fp   # held-out photos, + crops
    python tools/face_false_positives.py --no-verifier         # the detector alone (before)

``--crops`` writes ``<source>_<image>_<n>_<score>.jpg`` per box (the box and its context, real
faces prefixed ``real_``) and one contact sheet per source (``sheet_<source>_<k>.png``, numbered
tiles), to audit at a glance. Unsure boxes (``unsure`` in the audit file) are counted apart.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anonymizer.detection import CenterNetDetector, ModelCard  # noqa: E402
from anonymizer.verification import crop_with_context  # noqa: E402
from training.face_verifier_data import CAR_SOURCES, DATA, SOURCES, audited, near, validation_ids  # noqa: E402


def contact_sheet(tiles: list[np.ndarray], columns: int = 12) -> np.ndarray:
    """Numbered tiles in a grid (number = index in the list)."""
    size = tiles[0].shape[0]
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * (size + 14), columns * size, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * (size + 14) + 14 : (r + 1) * (size + 14), c * size : (c + 1) * size] = tile
        cv2.putText(sheet, str(i), (c * size + 2, r * (size + 14) + 11), 0, 0.35, (0, 0, 0), 1)
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default=",".join(CAR_SOURCES), help="comma-separated: " + ", ".join(CAR_SOURCES))
    parser.add_argument("--split", choices=["all", "val", "train"], default="all", help="val: never trained on")
    parser.add_argument("--threshold", type=float, help="detector threshold (default: the card's)")
    parser.add_argument("--no-verifier", action="store_true", help="the detector alone, as before the second stage")
    parser.add_argument("--crops", type=Path, help="write crops and contact sheets of every box here")
    args = parser.parse_args(argv)
    from anonymizer_local.evaluation import load_coco

    card = ModelCard.load("face")
    detector = CenterNetDetector(replace(card, verifier=None) if args.no_verifier else card)
    threshold = card.threshold if args.threshold is None else args.threshold
    faces, unsure = audited("faces"), audited("unsure")
    if args.crops:
        args.crops.mkdir(parents=True, exist_ok=True)
    totals = {"images": 0, "false": 0}
    print(f"{'set':<11} {'images':>6} {'boxes':>6} {'real':>5} {'unsure':>6} {'false':>6} {'false/img':>9}")
    for source in args.sources.split(","):
        items = load_coco(DATA / SOURCES[source])
        if args.split != "all":
            val = validation_ids(source, items)
            items = [it for it in items if (it.image_id in val) == (args.split == "val")]
        counts = {"boxes": 0, "real": 0, "unsure": 0, "false": 0}
        tiles = []
        for it in items:
            image = cv2.imread(str(it.path))
            dets = detector.detect(image, threshold)
            key = f"{SOURCES[source]}/{it.path.name}"
            boxes = np.asarray([d.box for d in dets], np.float32).reshape(-1, 4)
            is_real = near(boxes, faces.get(key))
            is_unsure = near(boxes, unsure.get(key)) & ~is_real
            counts["boxes"] += len(dets)
            counts["real"] += int(is_real.sum())
            counts["unsure"] += int(is_unsure.sum())
            counts["false"] += int((~is_real & ~is_unsure).sum())
            for n, (d, r, u) in enumerate(zip(dets, is_real, is_unsure, strict=True)):
                if args.crops:
                    crop = crop_with_context(image, d.box, 96, 2.0)
                    kind = "real_" if r else "unsure_" if u else ""
                    cv2.imwrite(str(args.crops / f"{kind}{source}_{it.path.stem}_{n}_{d.score:.2f}.jpg"), crop)
                    tiles.append(crop)
        if args.crops and tiles:
            for k in range(0, len(tiles), 96):
                cv2.imwrite(str(args.crops / f"sheet_{source}_{k // 96}.png"), contact_sheet(tiles[k : k + 96]))
        print(f"{source:<11} {len(items):>6} {counts['boxes']:>6} {counts['real']:>5} {counts['unsure']:>6} "
              f"{counts['false']:>6} {counts['false'] / max(len(items), 1):>9.3f}", flush=True)  # fmt: skip
        totals["images"] += len(items)
        totals["false"] += counts["false"]
    print(f"{'all':<11} {totals['images']:>6} {'':>6} {'':>5} {'':>6} {totals['false']:>6} "
          f"{totals['false'] / max(totals['images'], 1):>9.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
