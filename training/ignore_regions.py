"""Ignore regions for training on sets whose labels are incomplete (openimages-dev, open-lpr).

Those sets box some plates and leave others: treated as background, an unboxed plate would teach
the network to miss plates. A confident detection of the current model that overlaps no labelled
box is marked "ignore": the heatmap's negative loss is switched off there (never a positive, so a
wrong guess is not learnt either). Only training images are scanned; validation keeps its labels
as they are and its unmatched detections are audited by eye (`anonymize eval --unmatched`).

    python -m training.ignore_regions [--model plate-int8.onnx] [--threshold 0.5]
"""

from __future__ import annotations

import argparse
import json
import os

import cv2
import numpy as np

from anonymizer_local.evaluation import iou_matrix
from training import plates_data as D
from training.eval_plates import MODEL, detect, session

MAX_SIDE = 1280  # bigger photos are scanned downscaled (plates there are big enough)


def ignore_boxes(sess, item: D.Item, threshold: float, max_iou: float = 0.1) -> list[list[float]]:
    img = cv2.imread(item.path, cv2.IMREAD_COLOR)
    f = min(1.0, MAX_SIDE / max(img.shape[:2]))
    if f < 1:
        img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    boxes, _ = detect(sess, img, threshold)
    boxes = boxes / f
    if len(boxes) and len(item.boxes):
        boxes = boxes[iou_matrix(boxes, item.boxes).max(1) < max_iou]
    return [[round(float(v), 1) for v in b] for b in boxes]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--out", default=D.IGNORE)
    args = ap.parse_args(argv)
    sess = session(args.model, threads=1)
    incomplete = {s.name for s in D.SOURCES if not s.complete}
    out: dict[str, dict[str, list]] = {}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    todo = [it for it in D.load_parts()["train"] if it.source in incomplete]
    for n, it in enumerate(todo, 1):
        found = ignore_boxes(sess, it, args.threshold)
        if found:
            out.setdefault(it.source, {})[str(it.image_id)] = found
        if n % 200 == 0 or n == len(todo):  # written as it goes: training reloads it every epoch
            with open(args.out + ".part", "w") as f:
                json.dump(out, f)
            os.replace(args.out + ".part", args.out)
            print(f"{n}/{len(todo)}", flush=True)
    print({k: (len(v), int(np.sum([len(b) for b in v.values()]))) for k, v in out.items()})


if __name__ == "__main__":
    main()
