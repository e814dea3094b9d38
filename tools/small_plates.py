#!/usr/bin/env python3
"""Recall on small plates in a 1080p frame, by plate width (the plate issue: ~20 px must be found).

    python tools/small_plates.py [--widths 16,20,24,32,40] [--json build/small-plates.json]

Every labelled plate of the validation split (``training/splits.json`` ``val_image_ids``: the
held-out dashcam videos, and the web-cars validation photos, copies of them included) of the
two complete-label sources is made ``w`` px wide by
shrinking its whole photo (INTER_AREA, as a distant camera would see it), and the shrunk photo
is placed in a 1920x1080 grey frame (cropped around the plate when it does not fit). The
pipeline then runs exactly as in production (faces and plates, default policy); the plate
counts as found when a plate detection overlaps it with IoU >= 0.5 (and, separately, >= 0.3:
at 16 px a box one pixel off already loses a lot of IoU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "plates"
FRAME = (1080, 1920)


def held_out_plates():
    """(image path, plate box) for every labelled plate of the dashcam and web-cars validation split."""
    from anonymizer_local.evaluation import load_coco

    splits = json.loads((ROOT / "training" / "splits.json").read_text())
    for folder in ("romania-dashcam", "web-cars"):
        for truth in load_coco(DATA / folder, splits[folder]["val_image_ids"]):
            for box in truth.boxes.get("plate", []):
                yield truth.path, box


def place(image: np.ndarray, box: np.ndarray, width: int, rng: np.random.RandomState):
    """The photo shrunk so that ``box`` is ``width`` px wide, in a 1080p frame; the box's new place."""
    scale = width / (box[2] - box[0])
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    b = box * scale
    frame = np.full((*FRAME, 3), 110, np.uint8)
    h, w = small.shape[:2]
    # the part of the shrunk photo that fits, chosen so that the plate is inside it
    x0 = int(np.clip(rng.randint(int(b[2]) - min(w, FRAME[1]), int(b[0]) + 1), 0, max(0, w - FRAME[1])))
    y0 = int(np.clip(rng.randint(int(b[3]) - min(h, FRAME[0]), int(b[1]) + 1), 0, max(0, h - FRAME[0])))
    part = small[y0 : y0 + FRAME[0], x0 : x0 + FRAME[1]]
    ox, oy = rng.randint(0, FRAME[1] - part.shape[1] + 1), rng.randint(0, FRAME[0] - part.shape[0] + 1)
    frame[oy : oy + part.shape[0], ox : ox + part.shape[1]] = part
    return frame, b - np.array([x0, y0, x0, y0]) + np.array([ox, oy, ox, oy])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="16,20,24,32,40")
    parser.add_argument("--targets", default="face,plate", help="as in production: both share one trunk")
    parser.add_argument("--limit", type=int, help="only the first N plates (a quick look)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from anonymizer.options import parse_options
    from anonymizer.pipeline import Anonymizer
    from anonymizer_local.evaluation import iou_matrix

    anonymizer, options = Anonymizer(), parse_options({"targets": args.targets})
    widths = [int(w) for w in args.widths.split(",")]
    plates = list(held_out_plates())[: args.limit]
    rng = np.random.RandomState(0)
    found = {w: {"plates": 0, "iou50": 0, "iou30": 0} for w in widths}
    for path, box in plates:
        image = cv2.imread(str(path))
        for w in widths:
            frame, target = place(image, np.asarray(box, np.float64), w, rng)
            boxes = [d.box for d in anonymizer.detect_pixels(frame, options) if d.label == "plate"]
            overlaps = iou_matrix(np.asarray([target], np.float32), np.asarray(boxes, np.float32).reshape(-1, 4))
            best = float(overlaps.max()) if boxes else 0.0
            found[w]["plates"] += 1
            found[w]["iou50"] += best >= 0.5
            found[w]["iou30"] += best >= 0.3
    print(f"{len(plates)} held-out plates, each shrunk into a 1920x1080 frame ({args.targets})")
    print(f"{'width px':>8} {'recall@0.5':>10} {'recall@0.3':>10}")
    for w, f in found.items():
        print(f"{w:>8} {f['iou50'] / f['plates']:>10.3f} {f['iou30'] / f['plates']:>10.3f}")
    if args.json:
        args.json.write_text(json.dumps({"plates": len(plates), "by_width": found}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
