"""Detection quality against a COCO folder: recall at IoU 0.5 and 0.3, precision, AP50.

The same numbers back the README, the model cards and the acceptance checks, so they are
computed in one place. Categories follow ../shared/data: 1 = face, 2 = plate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anonymizer.detection import Detection

CATEGORY_LABELS = {1: "face", 2: "plate"}


@dataclass
class ImageTruth:
    image_id: int
    path: Path
    width: int
    height: int
    boxes: dict[str, np.ndarray]  # label -> N x 4 (x1, y1, x2, y2)


def load_coco(folder: Path, image_ids: Iterable[int] | None = None) -> list[ImageTruth]:
    """Ground truth per image; ``image_ids`` restricts to a split."""
    data = json.loads((folder / "annotations.json").read_text())
    wanted = set(image_ids) if image_ids is not None else None
    by_image: dict[int, dict[str, list]] = {}
    for ann in data["annotations"]:
        label = CATEGORY_LABELS.get(ann["category_id"])
        if label and not ann.get("iscrowd"):
            x, y, w, h = ann["bbox"]
            by_image.setdefault(ann["image_id"], {}).setdefault(label, []).append([x, y, x + w, y + h])
    truths = []
    for im in sorted(data["images"], key=lambda im: im["id"]):
        if wanted is not None and im["id"] not in wanted:
            continue
        boxes = {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in by_image.get(im["id"], {}).items()}
        truths.append(ImageTruth(im["id"], folder / im["file_name"], im["width"], im["height"], boxes))
    return truths


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)


def match(truth: np.ndarray, boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy matching by score (as COCO does): a flag per detection, True when it hits a truth."""
    return match_both(truth, boxes, scores, iou)[0]


def match_both(truth: np.ndarray, boxes: np.ndarray, scores: np.ndarray, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """``match`` plus a flag per truth, True when some detection took it."""
    order = np.argsort(-scores)
    hit = np.zeros(len(boxes), bool)
    used = np.zeros(len(truth), bool)
    overlaps = iou_matrix(boxes, truth)
    for i in order:
        if len(truth) == 0:
            break
        candidates = np.where(~used & (overlaps[i] >= iou))[0]
        if len(candidates):
            j = candidates[np.argmax(overlaps[i, candidates])]
            used[j] = True
            hit[i] = True
    return hit, used


def average_precision(scores: np.ndarray, hits: np.ndarray, n_truth: int) -> float:
    """Area under the interpolated precision/recall curve (all-points, as VOC 2010+ / COCO)."""
    if n_truth == 0:
        return float("nan")
    order = np.argsort(-scores)
    tp = np.cumsum(hits[order])
    fp = np.cumsum(~hits[order])
    recall = tp / n_truth
    precision = tp / np.maximum(tp + fp, 1)
    mrec = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
    mpre = np.concatenate([[1.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def evaluate(
    truths: list[ImageTruth],
    detect: Callable[[ImageTruth], list[Detection]],
    labels: Iterable[str],
    threshold: dict[str, float],
    unmatched: Callable[[ImageTruth, str, list[Detection], np.ndarray], None] | None = None,
) -> dict[str, dict]:
    """Per label: recall@0.5/0.3 and precision at the operating threshold, AP50 over all scores.

    ``detect`` should return detections down to a low score so that AP50 sees the whole curve;
    the operating figures only count those at or above ``threshold[label]``. ``unmatched`` gets,
    per image and label, the operating detections that hit no truth and the truths that no
    operating detection hit (IoU 0.5): for auditing labels and misses by eye.
    """
    labels = list(labels)
    per_label = {
        lab: {"scores": [], "hit50": [], "hit30": [], "n_truth": 0, "widths": [], "found": [], "empty": [0, 0]}
        for lab in labels
    }
    for truth in truths:
        found = detect(truth)
        for lab in labels:
            gt = truth.boxes.get(lab, np.zeros((0, 4), np.float32))
            dets = [d for d in found if d.label == lab]
            boxes = np.asarray([d.box for d in dets], np.float32).reshape(-1, 4)
            scores = np.asarray([d.score for d in dets], np.float32)
            acc = per_label[lab]
            acc["n_truth"] += len(gt)
            acc["scores"].append(scores)
            acc["hit50"].append(match(gt, boxes, scores, 0.5))
            acc["hit30"].append(match(gt, boxes, scores, 0.3))
            op = scores >= threshold[lab]
            hit, used = match_both(gt, boxes[op], scores[op], 0.5)
            acc["widths"].append(gt[:, 2] - gt[:, 0])
            acc["found"].append(used)
            if not len(gt):  # false detections on images without this label
                acc["empty"][0] += 1
                acc["empty"][1] += int(op.sum())
            if unmatched is not None:
                operating = [d for d, keep in zip(dets, op, strict=True) if keep]
                unmatched(truth, lab, [d for d, h in zip(operating, hit, strict=True) if not h], gt[~used])
    results = {}
    for lab, acc in per_label.items():
        scores = np.concatenate(acc["scores"]) if acc["scores"] else np.zeros(0)
        hit50 = np.concatenate(acc["hit50"]) if acc["hit50"] else np.zeros(0, bool)
        hit30 = np.concatenate(acc["hit30"]) if acc["hit30"] else np.zeros(0, bool)
        n = acc["n_truth"]
        op = scores >= threshold[lab]
        results[lab] = {
            "images": len(truths),
            "objects": n,
            "threshold": threshold[lab],
            "recall@0.5": round(float(hit50[op].sum() / n), 4) if n else None,
            "recall@0.3": round(float(hit30[op].sum() / n), 4) if n else None,
            "precision@0.5": round(float(hit50[op].sum() / max(op.sum(), 1)), 4),
            "AP50": round(average_precision(scores, hit50, n), 4) if n else None,
            "detections": int(op.sum()),
            "recall@0.5_by_width": recall_by_width(np.concatenate(acc["widths"]), np.concatenate(acc["found"])),
            "images_without": acc["empty"][0],
            "false_per_image_without": round(acc["empty"][1] / acc["empty"][0], 4) if acc["empty"][0] else None,
        }
    return results


WIDTH_BINS = ((0, 30), (30, 70), (70, 170), (170, float("inf")))  # px of the original image


def recall_by_width(widths: np.ndarray, found: np.ndarray) -> dict[str, dict]:
    """Recall at the operating threshold per object width, {'<30': {'objects', 'recall'}, ...}."""
    out = {}
    for lo, hi in WIDTH_BINS:
        sel = (widths >= lo) & (widths < hi)
        name = f"<{hi:g}" if lo == 0 else (f">={lo:g}" if hi == float("inf") else f"{lo:g}-{hi:g}")
        out[name] = {"objects": int(sel.sum()), "recall": round(float(found[sel].mean()), 4) if sel.any() else None}
    return out


def pooled(rows: dict[str, dict]) -> dict:
    """All sources together (rows of ``evaluate`` per source, one label): recall and precision
    pooled over objects and detections, recall per width bin too."""
    objects = sum(r["objects"] for r in rows.values())
    dets = sum(r["detections"] for r in rows.values())
    widths: dict[str, dict] = {}
    for r in rows.values():
        for k, v in r["recall@0.5_by_width"].items():
            w = widths.setdefault(k, {"objects": 0, "found": 0.0})
            w["objects"] += v["objects"]
            w["found"] += (v["recall"] or 0) * v["objects"]
    empty = sum(r["images_without"] for r in rows.values())
    return {
        "images": sum(r["images"] for r in rows.values()),
        "objects": objects,
        "threshold": next(iter(rows.values()))["threshold"],
        "recall@0.5": round(sum(r["recall@0.5"] * r["objects"] for r in rows.values()) / objects, 4),
        "precision@0.5": round(sum(r["precision@0.5"] * r["detections"] for r in rows.values()) / max(dets, 1), 4),
        "AP50": None,
        "detections": dets,
        "recall@0.5_by_width": {
            k: {"objects": v["objects"], "recall": round(v["found"] / v["objects"], 4) if v["objects"] else None}
            for k, v in widths.items()
        },
        "images_without": empty,
        "false_per_image_without": None,
    }
