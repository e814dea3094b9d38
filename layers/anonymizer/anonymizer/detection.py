"""CenterNet-style ONNX detectors (CenterFace for faces, our own model for plates).

Both models share one output format at stride 4 — ``heatmap`` (sigmoid), ``scale``
(log of height/4, width/4) and ``offset`` (y, x) — so one small class loads, pre-processes,
runs and decodes either. A JSON card next to each model carries its operating threshold
and working-resolution policy, so tuning a model never means editing code.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from .errors import DetectionError
from .networks import ALIGN, Network
from .verification import Verifier

MODELS_DIR = Path(__file__).resolve().parent / "models"
STRIDE = 4
MAX_UPSCALE = 3.0
SCREEN_MIN_PIXELS = 1_000_000  # network-input pixels from which a native pass is screened first
SCREEN_SCALE = 1 / 3  # of the pass's scale: where the screening run looks (1080p: the coarse face pass)
SCREEN_TRUST = 2.0  # objects this many times the smallest detectable size are taken from the screening run
SCREEN_SURE = 0.5  # ... and where they score this much, their area needs no native-scale run
RUN_COST_PIXELS = 16_000  # the fixed cost of one network run, in input pixels' worth (about 1.5 ms)


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the upright image

    def to_dict(self) -> dict:
        return {"label": self.label, "score": round(self.score, 4), "box": [round(v, 1) for v in self.box]}


@dataclass(frozen=True)
class ModelCard:
    """What the detector needs to know about a model file; read from ``<name>.json``."""

    label: str
    file: str
    version: str
    sha256: str
    threshold: float  # operating threshold, calibrated on tuning data
    min_side: int  # images whose long side is smaller are upscaled (small faces/plates)
    max_side: int  # images whose long side is larger are downscaled for the global pass
    min_object: float  # smallest object (px of the original image) that must not be lost ...
    min_detectable: float  # ... and the size (px at the network input) the model still finds
    tile_side: int  # the fine pass over large images runs in tiles of this size (bounded memory)
    coarse_side: int = 640  # ... beside a coarse pass at this long side, for objects too big for the tiles
    screen_threshold: float | None = None  # heatmap level of the screening run that sends a spot to the full pass
    screen_margin: int = 32  # px of network input kept around such a spot (the object and its context)
    box_adjust: tuple[float, float, float] = (0.0, 1.0, 1.0)  # dy (of height), width and height factors
    closeup_side: int | None = None  # an extra pass at this long side for close-ups (objects of half the image)
    verifier: str | None = None  # card of a second-stage classifier that must confirm each box (verification.py)

    @classmethod
    def load(cls, label: str, models_dir: Path = MODELS_DIR) -> ModelCard:
        data = json.loads((models_dir / f"{label}.json").read_text())
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "box_adjust" in fields:
            fields["box_adjust"] = tuple(fields["box_adjust"])
        return cls(**fields)


def working_scale(width: int, height: int, min_side: int, max_side: int) -> float:
    """Resize factor for the global pass: upscale small images, cap big ones."""
    long_side = max(width, height)
    if long_side < min_side:
        return min(min_side / long_side, MAX_UPSCALE)
    if long_side > max_side:
        return max_side / long_side
    return 1.0


HEADS = ["heatmap", "scale", "offset"]
Heads = tuple[list[np.ndarray], tuple[int, int, int, int]]  # one label's outputs of a pass, and its sizes
Job = tuple["Pass", tuple[str, ...]]  # a pass and the labels it must answer for
RunJobs = Callable[[np.ndarray, list[Job]], list[dict[str, Heads]]]


class CenterNetDetector:
    """One model: load once, then ``detect`` any BGR image."""

    def __init__(self, card: ModelCard, models_dir: Path = MODELS_DIR, threads: int | None = None):
        self.card = card
        self.network = Network(models_dir / card.file, card.sha256, card.label, threads)
        self.verifier = Verifier.load(models_dir / card.verifier) if card.verifier else None

    @property
    def label(self) -> str:
        return self.card.label

    def detect(
        self, image: np.ndarray, threshold: float | None = None, min_size: float | None = None
    ) -> list[Detection]:
        """All objects at or above ``threshold`` (default: the card's operating threshold)."""
        threshold = self.card.threshold if threshold is None else threshold
        plan = [(p, (self.label,)) for p in self.plan(image.shape[1], image.shape[0], min_size)]
        parts = run_plan(image, plan, self.run_jobs, {self.label: self.card}, {self.label: threshold})
        return self.verify(image, self.finish(parts[self.label], image.shape[1], image.shape[0]), threshold)

    def plan(self, width: int, height: int, min_size: float | None = None) -> list[Pass]:
        """The passes that find every object from ``min_size`` px (default: the card's) upwards.

        Images up to ``max_side`` get one pass at the working scale (small ones upscaled; a larger
        ``min_size`` than the card's lets that pass run at a reduced scale instead). Larger
        ones get a fine pass at the scale where objects of ``min_size`` px stay detectable — in
        tiles, so memory stays bounded — plus a coarse pass with the long side at ``coarse_side``
        for objects too large for the fine pass to see whole. Big fine passes are screened.
        """
        return self._with_closeup(self._passes(width, height, min_size), width, height)

    def _with_closeup(self, passes: list[Pass], width: int, height: int) -> list[Pass]:
        """Plus a pass at ``closeup_side`` when every pass sees the image much bigger than that: an
        object filling half the image (a car-listing close-up) is then seen at a size it was trained on."""
        side = self.card.closeup_side
        scale = side / max(width, height) if side else 0.0
        if not side or min(p.scale for p in passes) < 1.5 * scale:
            return passes
        return [*passes, Pass(scale, 0, 0, width, height)]

    def _passes(self, width: int, height: int, min_size: float | None) -> list[Pass]:
        min_size = self.card.min_object if min_size is None else min_size
        scale = working_scale(width, height, self.card.min_side, self.card.max_side)
        fine = min(MAX_UPSCALE, self.card.min_detectable / min_size)
        if scale >= fine:  # one pass sees every size; without upscaling, no finer than min_size needs
            return [screening(Pass(scale if scale > 1 else fine, 0, 0, width, height))]
        passes = [Pass(min(scale, self.card.coarse_side / max(width, height)), 0, 0, width, height)]
        side = int(self.card.tile_side / fine)
        overlap = int(64 / fine)  # small objects (the fine pass's job) fit in the overlap
        for y0, y1 in _spans(height, side, overlap):
            for x0, x1 in _spans(width, side, overlap):
                passes.append(screening(Pass(fine, x0, y0, x1, y1)))
        return passes

    def run_jobs(self, image: np.ndarray, jobs: list[Job]) -> list[dict[str, Heads]]:
        prepared = [prepare(image, p) for p, _ in jobs]
        outputs = self.network.run(HEADS, [blob for blob, _ in prepared])
        return [{self.label: (out, sizes)} for out, (_, sizes) in zip(outputs, prepared, strict=True)]

    def finish(self, parts: list[tuple[np.ndarray, np.ndarray]], width: int, height: int) -> list[Detection]:
        """Boxes of all passes -> the card's box convention -> one NMS."""
        boxes = np.vstack([b for b, _ in parts]).reshape(-1, 4)
        scores = np.concatenate([s for _, s in parts]).astype(np.float32)
        boxes = self._adjust(boxes, width, height)
        keep = nms(boxes, scores, 0.4)
        return [Detection(self.label, float(scores[i]), tuple(float(v) for v in boxes[i])) for i in keep]

    def verify(self, image: np.ndarray, detections: list[Detection], threshold: float) -> list[Detection]:
        """Detections rescored by the card's verifier, kept from ``threshold`` (as they are without one)."""
        if self.verifier is None or not detections:
            return detections
        scores, boxes = self.verifier.verify(image, [d.box for d in detections], [d.score for d in detections])
        kept = np.flatnonzero(scores >= threshold)
        if not self.verifier.card.refine:
            return [replace(detections[i], score=float(scores[i])) for i in kept]
        boxes = np.clip(boxes, 0, [image.shape[1], image.shape[0]] * 2).astype(np.float32)
        kept = kept[nms(boxes[kept], scores[kept], 0.4)] if len(kept) else kept  # refined boxes may meet
        return [replace(detections[i], score=float(scores[i]), box=tuple(float(v) for v in boxes[i])) for i in kept]

    def _adjust(self, boxes: np.ndarray, w: int, h: int) -> np.ndarray:
        """Map the model's box convention to the one our data labels (see the model card)."""
        dy, sw, sh = self.card.box_adjust
        if (dy, sw, sh) == (0.0, 1.0, 1.0) or not len(boxes):
            return boxes
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2 + dy * bh
        out = np.stack([cx - bw * sw / 2, cy - bh * sh / 2, cx + bw * sw / 2, cy + bh * sh / 2], axis=1)
        return np.clip(out, 0, [w, h, w, h]).astype(np.float32)


@dataclass(frozen=True)
class Pass:
    """One network run: the region [x0, x1) x [y0, y1) of the image, resized by ``scale``.

    A ``screened`` pass first runs at ``SCREEN_SCALE`` of its scale; only the spots where that run sees
    anything (``run_plan``) then run at the full scale.
    """

    scale: float
    x0: int
    y0: int
    x1: int
    y1: int
    screened: bool = False

    @property
    def area(self) -> int:
        return (self.x1 - self.x0) * (self.y1 - self.y0)


def screening(p: Pass) -> Pass:
    """Screen a pass when it is big and not upscaled: the rule is geometric, so the face and the
    plate plans mark the same passes and the joint network still runs each of them once."""
    return replace(p, screened=p.scale <= 1 and p.area * p.scale**2 >= SCREEN_MIN_PIXELS)


def run_plan(
    image: np.ndarray, plan: list[Job], run: RunJobs, cards: dict[str, ModelCard], thresholds: dict[str, float]
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Boxes and scores per label for a plan, in two rounds of network runs (each run side by side).

    Why screening: at native scale most of a photo holds nothing, and the costly part is the
    native-scale run over all of it. So a screened pass first runs at ``SCREEN_SCALE`` of its
    scale, which finds big objects outright; its heatmap, read at a low level
    (``screen_threshold``), marks where smaller ones may be, and in the second round those
    spots, with a margin, run at full scale. Each label's spots are its own, so a label's
    answer does not depend on which other labels were asked for. Where the spots would cost
    more than the whole pass, it runs whole. A screening run that is also a planned pass (a
    1080p frame's coarse face pass) runs once.
    """
    looks = [replace(p, scale=p.scale * SCREEN_SCALE, screened=False) if p.screened else p for p, _ in plan]
    first: dict[Pass, list[str]] = {}
    for q, (_, labels) in zip(looks, plan, strict=True):
        first.setdefault(q, [])
        first[q] += [k for k in labels if k not in first[q]]
    seen = dict(zip(first, run(image, [(q, tuple(labels)) for q, labels in first.items()]), strict=True))
    found: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in cards}
    second: dict[Pass, list[str]] = {}  # spot -> labels
    outer: dict[Pass, Pass] = {}  # spot -> the screened pass it belongs to
    for (p, labels), q in zip(plan, looks, strict=True):
        heads = seen[q]
        for k in labels:
            boxes, scores = decode_pass(heads[k][0], q, heads[k][1], thresholds[k])
            if not p.screened:
                found[k].append((boxes, scores))
                continue
            whole = seen_whole(boxes, cards[k], q)
            spots = screened_spots(heads[k], boxes[whole & (scores >= SCREEN_SURE)], cards[k], q, p)
            if run_cost(spots) >= run_cost([p]):  # crowded: the whole pass costs less than its spots
                spots = [replace(p, screened=False)]
            else:
                found[k].append((boxes[whole], scores[whole]))
            for r in spots:
                second.setdefault(r, []).append(k)
                outer[r] = p
    jobs = [(r, tuple(labels)) for r, labels in second.items()]
    for (r, labels), heads in zip(jobs, run(image, jobs), strict=True):
        for k in labels:
            boxes, scores = decode_pass(heads[k][0], r, heads[k][1], thresholds[k])
            inner = _inside(boxes, r, outer[r], cards[k].screen_margin / r.scale / 2)
            found[k].append((boxes[inner], scores[inner]))
    return found


def seen_whole(boxes: np.ndarray, card: ModelCard, screen: Pass) -> np.ndarray:
    """Boxes of a screening run big enough (``SCREEN_TRUST`` x the smallest detectable) to be taken as they are."""
    return boxes[:, 2] - boxes[:, 0] >= SCREEN_TRUST * card.min_detectable / screen.scale


def screened_spots(heads: Heads, sure: np.ndarray, card: ModelCard, screen: Pass, p: Pass) -> list[Pass]:
    """The full-scale passes a screening run asks for: its hot cells, less those inside the
    ``sure`` boxes (objects it found whole and sure need no second look)."""
    (heatmap, *_), (_, _, nw, nh) = heads
    hot = heatmap[0, 0, : math.ceil(nh / STRIDE), : math.ceil(nw / STRIDE)] >= card.screen_threshold
    cell = STRIDE / screen.scale  # image px per heatmap cell
    for x0, y0, x1, y1 in sure:
        hot[
            int((y0 - p.y0) / cell) : math.ceil((y1 - p.y0) / cell),
            int((x0 - p.x0) / cell) : math.ceil((x1 - p.x0) / cell),
        ] = False
    return proposal_regions(hot, screen, p, card.screen_margin)


def proposal_regions(hot: np.ndarray, screen: Pass, p: Pass, margin: int) -> list[Pass]:
    """Hot cells of a screening heatmap -> full-scale passes around them.

    Each group of nearby cells gets its bounding box, on the whole pass's 32 px grid (so a spot
    sees what the whole pass would). Two boxes are joined only where one run over their joint
    box costs no more than two runs, so a scattered crowd does not become one pass over all.
    """
    cell = STRIDE / screen.scale
    reach = math.ceil(margin / p.scale / cell)
    grown = cv2.dilate(hot.astype(np.uint8), np.ones((2 * reach + 1, 2 * reach + 1), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
    grid = ALIGN / p.scale
    rects = [
        (
            p.x0 + int(x * cell // grid * grid),
            p.y0 + int(y * cell // grid * grid),
            min(p.x1, p.x0 + math.ceil(math.ceil((x + w) * cell / grid) * grid)),
            min(p.y1, p.y0 + math.ceil(math.ceil((y + h) * cell / grid) * grid)),
        )
        for x, y, w, h, _ in stats[1:count]
    ]
    area = RUN_COST_PIXELS / p.scale**2  # a run's fixed cost, in image pixels

    def cost(r: tuple[int, int, int, int]) -> float:
        return (r[2] - r[0]) * (r[3] - r[1]) + area

    joined = True
    while joined:
        joined = False
        for i, j in itertools.combinations(range(len(rects)), 2):
            a, b = rects[i], rects[j]
            both = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
            if cost(both) <= cost(a) + cost(b):
                rects[i] = both
                del rects[j]
                joined = True
                break
    return [Pass(p.scale, *r) for r in rects]


def run_cost(passes: list[Pass]) -> float:
    """Estimated cost of running these passes, in network-input pixels."""
    return sum(p.area * p.scale**2 + RUN_COST_PIXELS for p in passes)


def _inside(boxes: np.ndarray, r: Pass, p: Pass, margin: float) -> np.ndarray:
    """Boxes whose centre is not in the margin of a cut edge (objects cut there are the screening run's)."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    keep = np.ones(len(boxes), bool)
    for centre, lo, hi, outer_lo, outer_hi in ((cx, r.x0, r.x1, p.x0, p.x1), (cy, r.y0, r.y1, p.y0, p.y1)):
        if lo > outer_lo:
            keep &= centre >= lo + margin
        if hi < outer_hi:
            keep &= centre < hi - margin
    return keep


def prepare(image: np.ndarray, p: Pass) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Crop, resize and pad to multiples of 32 -> float NCHW RGB blob (0..255) and (w, h, nw, nh)."""
    crop = image[p.y0 : p.y1, p.x0 : p.x1]
    h, w = crop.shape[:2]
    nw, nh = max(1, round(w * p.scale)), max(1, round(h * p.scale))
    interpolation = cv2.INTER_AREA if p.scale < 1 else cv2.INTER_LINEAR
    resized = crop if (nw, nh) == (w, h) else cv2.resize(crop, (nw, nh), interpolation=interpolation)
    pw, ph = math.ceil(nw / 32) * 32, math.ceil(nh / 32) * 32
    blob = np.empty((1, 3, ph, pw), np.float32)
    blob[0, :, nh:], blob[0, :, :nh, nw:] = 0, 0
    for k in range(3):  # BGR -> RGB planes, 0..255; plane by plane is twice as fast as one transpose
        blob[0, k, :nh, :nw] = resized[:, :, 2 - k]
    return blob, (w, h, nw, nh)


def decode_pass(
    heads: list[np.ndarray], p: Pass, sizes: tuple[int, int, int, int], threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Heads of one pass -> boxes in the pixels of the whole image."""
    heatmap, log_size, offset = heads
    w, h, nw, nh = sizes
    boxes, scores = decode(heatmap[0, 0], log_size[0], offset[0], threshold)
    boxes /= np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
    np.clip(boxes, 0, [w, h, w, h], out=boxes)
    boxes += np.array([p.x0, p.y0, p.x0, p.y0], np.float32)
    return boxes, scores


def _spans(length: int, side: int, overlap: int) -> list[tuple[int, int]]:
    """Equal, overlapping [start, end) spans covering ``length``: no thin slivers at the edge."""
    if length <= side:
        return [(0, length)]
    count = math.ceil((length - overlap) / (side - overlap))
    size = math.ceil((length + (count - 1) * overlap) / count)
    starts = [round(i * (length - size) / (count - 1)) for i in range(count)]
    return [(s, s + size) for s in starts]


def decode(
    heatmap: np.ndarray, log_size: np.ndarray, offset: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of the heatmap (3x3 local maxima) above threshold -> boxes in input pixels."""
    peaks = heatmap == cv2.dilate(heatmap, np.ones((3, 3), np.uint8))
    ys, xs = np.nonzero(peaks & (heatmap >= threshold))
    scores = heatmap[ys, xs].astype(np.float32)
    bh = np.exp(log_size[0, ys, xs]) * STRIDE
    bw = np.exp(log_size[1, ys, xs]) * STRIDE
    cy = (ys + offset[0, ys, xs] + 0.5) * STRIDE
    cx = (xs + offset[1, ys, xs] + 0.5) * STRIDE
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)
    return boxes.reshape(-1, 4), scores


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression; indices of kept boxes, best first."""
    order = np.argsort(-scores)
    keep: list[int] = []
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(xx2 - xx1, 0) * np.maximum(yy2 - yy1, 0)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-6)
        order = rest[iou < iou_threshold]
    return keep


@cache
def get_detector(label: str) -> CenterNetDetector:
    """One detector per model per process (a Lambda container keeps it between invocations)."""
    return CenterNetDetector(ModelCard.load(label))


class SharedTrunkDetector:
    """Face and plate networks joined on their common trunk (``tools/build_shared_model.py``).

    A pass that every member's plan contains (same scale, same region) runs once through the
    joint network; the others run on each member's own network. Faces come out bit for bit
    as from the face model; plates through the face trunk's int8 ranges (measured in plate.md).
    """

    def __init__(
        self,
        card: dict,
        members: dict[str, CenterNetDetector],
        models_dir: Path = MODELS_DIR,
        network: Network | None = None,
    ):
        if stale := stale_members(card, members):
            raise DetectionError(f"shared model was not built from this {stale[0]} model")
        self.card = card
        self.members = members
        self.version = f"{card['file']}@{card['sha256'][:12]}"
        self.network = network or Network(models_dir / card["file"], card["sha256"], "shared")

    def detect(
        self, image: np.ndarray, wanted: dict[str, tuple[float | None, float | None]], timings: dict | None = None
    ) -> dict[str, list[Detection]]:
        """``wanted``: label -> (threshold, min_size), None for the card's; detections per label.

        ``timings`` (ms) gets ``detect_<a>+<b>``: all of the detection (the runs interleave).
        """
        timings = {} if timings is None else timings
        t0 = time.perf_counter()
        h, w = image.shape[:2]
        thresholds = {k: self.members[k].card.threshold if t is None else t for k, (t, _) in wanted.items()}
        passes: dict[Pass, list[str]] = {}
        for k, (_, min_size) in wanted.items():
            for p in self.members[k].plan(w, h, min_size):
                passes.setdefault(p, []).append(k)
        cards = {k: self.members[k].card for k in wanted}
        plan = [(p, tuple(labels)) for p, labels in passes.items()]
        parts = run_plan(image, plan, self.run_jobs, cards, thresholds)
        found = {}
        for k in wanted:  # each member's own verifier: a label's answer does not depend on the others
            member = self.members[k]
            found[k] = member.verify(image, member.finish(parts[k], w, h), thresholds[k])
        timings["detect_" + "+".join(wanted)] = elapsed_ms(t0)
        return found

    def run_jobs(self, image: np.ndarray, jobs: list[Job]) -> list[dict[str, Heads]]:
        """Jobs for several labels run through the joint network, the others on their member's own."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, (_, labels) in enumerate(jobs):
            groups.setdefault(labels, []).append(i)
        started = []
        for labels, members in groups.items():
            prepared = [prepare(image, jobs[i][0]) for i in members]
            if len(labels) > 1:
                network, names = self.network, [f"{k}_{head}" for k in labels for head in HEADS]
            else:
                network, names = self.members[labels[0]].network, HEADS
            started.append((labels, members, prepared, network.start(names, [blob for blob, _ in prepared])))
        results: list[dict[str, Heads]] = [{} for _ in jobs]
        for labels, members, prepared, outputs in started:
            for i, out, (_, sizes) in zip(members, outputs(), prepared, strict=True):
                results[i] = {k: (out[n * len(HEADS) : (n + 1) * len(HEADS)], sizes) for n, k in enumerate(labels)}
        return results


def stale_members(card: dict, members: dict[str, CenterNetDetector]) -> list[str]:
    """Labels whose model file is not the one the joint model was built from."""
    return [k for k, m in members.items() if card["members"].get(k, {}).get("sha256") != m.card.sha256]


def elapsed_ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


def shared_card(labels: frozenset[str], models_dir: Path = MODELS_DIR) -> dict | None:
    """The card of a joint model for exactly these labels, if one was built."""
    for path in sorted(models_dir.glob("*.json")):
        card = json.loads(path.read_text())
        if set(card.get("members", ())) == labels:
            return card
    return None


@cache
def get_shared_detector(labels: frozenset[str]) -> SharedTrunkDetector | None:
    """The joint detector for these labels, or None (then each model runs on its own)."""
    card = shared_card(labels) if len(labels) > 1 else None
    if card is None:
        return None
    with ThreadPoolExecutor(len(labels) + 1) as pool:  # onnxruntime builds sessions side by side
        network = pool.submit(Network, MODELS_DIR / card["file"], card["sha256"], "shared")
        members = dict(zip(labels, pool.map(get_detector, labels), strict=True))
    if stale_members(card, members):
        return None  # left over from older member models: each model runs on its own
    return SharedTrunkDetector(card, members, network=network.result())


def available_models() -> list[str]:
    """Labels with a model of their own (joint models are listed by their members)."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.json") if "label" in json.loads(p.read_text()))
