#!/usr/bin/env python3
"""Face recall in 1080p frames made of real labelled photos: what a speed setting costs.

    python tools/frame_recall.py [--set face.min_size=30 --set plate.min_size=40]

The face set's photos are ~400 px wide, so ``anonymize eval`` measures them upscaled to 1024 px,
where ``face.min_size`` changes nothing. A 1080p camera frame is where small faces and the
resolution policy meet: here every 6 photos of ``faces/street-masks-dev`` (in id order) are
tiled 3 x 2 into one 1920x1080 frame (each scaled to fit its 640x540 cell, so faces keep about
their size), their labels moved along, and the pipeline runs on the frame as in production
(faces and plates on). Recall and AP50 use the same scoring as ``anonymize eval``, also split
by face width in the frame.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "data" / "faces" / "street-masks-dev"
CELL_W, CELL_H, COLS, ROWS = 640, 540, 3, 2


def frames(truths):
    """(frame pixels, face boxes in frame pixels) for every 6 labelled photos."""
    group = COLS * ROWS
    for start in range(0, len(truths) - group + 1, group):
        frame = np.full((CELL_H * ROWS, CELL_W * COLS, 3), 100, np.uint8)
        boxes = []
        for k, truth in enumerate(truths[start : start + group]):
            image = cv2.imread(str(truth.path))
            h, w = image.shape[:2]
            scale = min(CELL_W / w, CELL_H / h)
            small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            ox, oy = (k % COLS) * CELL_W, (k // COLS) * CELL_H
            frame[oy : oy + small.shape[0], ox : ox + small.shape[1]] = small
            for box in truth.boxes.get("face", []):
                boxes.append(box * scale + np.array([ox, oy, ox, oy], np.float32))
        yield frame, np.asarray(boxes, np.float32).reshape(-1, 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="request options")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from anonymizer.options import parse_options, parse_settings
    from anonymizer.pipeline import Anonymizer
    from anonymizer_local.evaluation import ImageTruth, evaluate, load_coco

    options = parse_options({"targets": "face,plate", **parse_settings(args.set)})
    threshold = options.for_target("face").threshold or Anonymizer().detector("face").card.threshold
    anonymizer = Anonymizer()
    made, found = [], {}
    for k, (frame, boxes) in enumerate(frames(load_coco(FACES))):
        made.append(ImageTruth(k, FACES, frame.shape[1], frame.shape[0], {"face": boxes}))
        found[k] = anonymizer.detect_pixels(frame, options, min(0.05, threshold))
    widths = {"all": (0, 1e9), "<15 px": (0, 15), "15-20 px": (15, 20), "20-30 px": (20, 30), ">=30 px": (30, 1e9)}
    results = {}
    for name, (lo, hi) in widths.items():
        subset = []
        for t in made:
            w = t.boxes["face"][:, 2] - t.boxes["face"][:, 0]
            keep = t.boxes["face"][(w >= lo) & (w < hi)]
            subset.append(ImageTruth(t.image_id, t.path, t.width, t.height, {"face": keep}))
        r = evaluate(subset, lambda t: found[t.image_id], ["face"], {"face": threshold})["face"]
        results[name] = {"faces": r["objects"], "recall@0.5": r["recall@0.5"]}
        if name == "all":  # (per width, detections of other widths would count as false positives)
            results[name].update(AP50=r["AP50"], precision=r["precision@0.5"])
    print(f"{len(made)} frames 1920x1080 from {FACES.name}, options {args.set or 'default'}")
    print(f"{'face width':<10} {'faces':>6} {'R@0.5':>6}")
    for name, r in results.items():
        print(f"{name:<10} {r['faces']:>6} {r['recall@0.5']:>6.3f}")
    print(f"all: precision@0.5 {results['all']['precision']:.3f}, AP50 {results['all']['AP50']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"settings": args.set, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
