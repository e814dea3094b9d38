"""Per-frame figures for a clip whose every frame's boxes are known (synthetic pans/zooms over
labelled photos, or a labelled real clip): recall at IoU 0.5 and "bare" frames.

A labelled object is *bare* on a frame when less than half of its box lies under the regions
that were actually covered (after the margin). The goal counts only objects the detector found
on at least one frame of their own track: an object never found at all is a detector miss,
not a tracking one, and is reported apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .tracking import Box, iou

Labelled = tuple[int, str, Box]  # (object id, label, box) on one frame


@dataclass
class ClipFigures:
    objects: int  # labelled (object, frame) pairs
    recall: float  # share matched at IoU 0.5 by a covered box (before margin)
    bare: int  # (object, frame) pairs less than half covered
    bare_found: int  # ... of objects found by the detector on at least one frame
    found_objects: int
    total_objects: int

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def _matched(gt: Sequence[Box], boxes: Sequence[Box], threshold: float = 0.5) -> list[bool]:
    pairs = sorted(((iou(g, b), gi, bi) for gi, g in enumerate(gt) for bi, b in enumerate(boxes)), reverse=True)
    hit, used = [False] * len(gt), set()
    for overlap, gi, bi in pairs:
        if overlap < threshold:
            break
        if not hit[gi] and bi not in used:
            hit[gi] = True
            used.add(bi)
    return hit


def _covered_share(box: Box, regions: Sequence[tuple[int, int, int, int]]) -> float:
    x1, y1, x2, y2 = (round(v) for v in box)
    w, h = max(1, x2 - x1), max(1, y2 - y1)
    mask = np.zeros((h, w), bool)
    for rx1, ry1, rx2, ry2 in regions:
        mask[max(0, ry1 - y1) : max(0, ry2 - y1), max(0, rx1 - x1) : max(0, rx2 - x1)] = True
    return float(mask.mean())


def clip_figures(
    labels: Sequence[Sequence[Labelled]],
    covered: Sequence[Sequence[tuple[str, Box, tuple[int, int, int, int]]]],
    found: set[int],
) -> ClipFigures:
    """``labels[f]``: the labelled objects of frame f; ``covered[f]``: (label, box, region)
    covered on frame f; ``found``: ids of objects the detector matched on some frame."""
    n = hits = bare = bare_found = 0
    ids: set[int] = set()
    for gts, cov in zip(labels, covered, strict=True):
        for label in {g[1] for g in gts}:
            g_here = [g for g in gts if g[1] == label]
            boxes = [c[1] for c in cov if c[0] == label]
            regions = [c[2] for c in cov if c[0] == label]
            hit = _matched([g[2] for g in g_here], boxes)
            n += len(g_here)
            hits += sum(hit)
            for (oid, _, box), _h in zip(g_here, hit, strict=True):
                ids.add(oid)
                if _covered_share(box, regions) < 0.5:
                    bare += 1
                    bare_found += oid in found
    return ClipFigures(n, hits / n if n else 1.0, bare, bare_found, len(found & ids), len(ids))


def found_objects(
    labels: Sequence[Sequence[Labelled]], detections: dict[int, Sequence[tuple[str, Box]]], threshold: float = 0.5
) -> set[int]:
    """Ids of labelled objects matched (IoU >= threshold) by a raw detection on some frame."""
    out: set[int] = set()
    for f, dets in detections.items():
        for oid, label, box in labels[f]:
            if any(d[0] == label and iou(d[1], box) >= threshold for d in dets):
                out.add(oid)
    return out
