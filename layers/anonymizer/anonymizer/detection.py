"""CenterNet-style ONNX detectors (CenterFace for faces, our own model for plates).

Both models share one output format at stride 4 — ``heatmap`` (sigmoid), ``scale``
(log of height/4, width/4) and ``offset`` (y, x) — so one small class loads, pre-processes,
runs and decodes either. A JSON card next to each model carries its operating threshold
and working-resolution policy, so tuning a model never means editing code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from .errors import DetectionError

MODELS_DIR = Path(__file__).resolve().parent / "models"
STRIDE = 4
MAX_UPSCALE = 3.0


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
    box_adjust: tuple[float, float, float] = (0.0, 1.0, 1.0)  # dy (of height), width and height factors

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


def default_threads() -> int:
    """Threads from the Lambda memory size (vCPUs scale with memory), else the CPU affinity."""
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    if memory:
        return max(1, min(6, round(int(memory) / 1769)))
    return max(1, len(os.sched_getaffinity(0)))


HEADS = ["heatmap", "scale", "offset"]


def load_session(path: Path, sha256: str, name: str, threads: int | None = None):
    """An onnxruntime session for a model file that must match its card's sha256."""
    import onnxruntime as ort

    try:
        model_bytes = path.read_bytes()
    except OSError as exc:
        raise DetectionError(f"{name} model missing: {path.name}") from exc
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != sha256:
        raise DetectionError(f"{name} model {path.name} does not match its card (sha256 {digest[:12]})")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_session(session, lock: threading.Lock, names: list[str], blob: np.ndarray, name: str) -> list[np.ndarray]:
    try:
        with lock:
            return session.run(names, {"input": blob})
    except Exception as exc:  # onnxruntime raises its own types; never let an image through
        raise DetectionError(f"{name} detector failed to run") from exc


class CenterNetDetector:
    """One model: load once, then ``detect`` any BGR image."""

    def __init__(self, card: ModelCard, models_dir: Path = MODELS_DIR, threads: int | None = None):
        self.card = card
        self.session = load_session(models_dir / card.file, card.sha256, card.label, threads)
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return self.card.label

    def detect(
        self, image: np.ndarray, threshold: float | None = None, min_size: float | None = None
    ) -> list[Detection]:
        """All objects at or above ``threshold`` (default: the card's operating threshold)."""
        threshold = self.card.threshold if threshold is None else threshold
        parts = [self.run_pass(image, p, threshold) for p in self.plan(image.shape[1], image.shape[0], min_size)]
        return self.finish(parts, image.shape[1], image.shape[0])

    def plan(self, width: int, height: int, min_size: float | None = None) -> list[Pass]:
        """The passes that find every object from ``min_size`` px (default: the card's) upwards.

        Images up to ``max_side`` get one pass at the working scale (small ones upscaled; a larger
        ``min_size`` than the card's lets that pass run at a reduced scale instead). Larger
        ones get a fine pass at the scale where objects of ``min_size`` px stay detectable — in
        tiles, so memory stays bounded — plus a coarse pass with the long side at ``coarse_side``
        for objects too large for the fine pass to see whole.
        """
        min_size = self.card.min_object if min_size is None else min_size
        scale = working_scale(width, height, self.card.min_side, self.card.max_side)
        fine = min(MAX_UPSCALE, self.card.min_detectable / min_size)
        if scale >= fine:  # one pass sees every size; without upscaling, no finer than min_size needs
            return [Pass(scale if scale > 1 else fine, 0, 0, width, height)]
        passes = [Pass(min(scale, self.card.coarse_side / max(width, height)), 0, 0, width, height)]
        side = int(self.card.tile_side / fine)
        overlap = int(64 / fine)  # small objects (the fine pass's job) fit in the overlap
        for y0, y1 in _spans(height, side, overlap):
            for x0, x1 in _spans(width, side, overlap):
                passes.append(Pass(fine, x0, y0, x1, y1))
        return passes

    def run_pass(self, image: np.ndarray, p: Pass, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        blob, sizes = prepare(image, p)
        heads = run_session(self.session, self._lock, HEADS, blob, self.label)
        return decode_pass(heads, p, sizes, threshold)

    def finish(self, parts: list[tuple[np.ndarray, np.ndarray]], width: int, height: int) -> list[Detection]:
        """Boxes of all passes -> the card's box convention -> one NMS."""
        boxes = np.vstack([b for b, _ in parts]).reshape(-1, 4)
        scores = np.concatenate([s for _, s in parts]).astype(np.float32)
        boxes = self._adjust(boxes, width, height)
        keep = nms(boxes, scores, 0.4)
        return [Detection(self.label, float(scores[i]), tuple(float(v) for v in boxes[i])) for i in keep]

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
    """One network run: the region [x0, x1) x [y0, y1) of the image, resized by ``scale``."""

    scale: float
    x0: int
    y0: int
    x1: int
    y1: int


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

    def __init__(self, card: dict, members: dict[str, CenterNetDetector], models_dir: Path = MODELS_DIR):
        if stale := stale_members(card, members):
            raise DetectionError(f"shared model was not built from this {stale[0]} model")
        self.card = card
        self.members = members
        self.version = f"{card['file']}@{card['sha256'][:12]}"
        self.session = load_session(models_dir / card["file"], card["sha256"], "shared")
        self._lock = threading.Lock()

    def detect(
        self, image: np.ndarray, wanted: dict[str, tuple[float | None, float | None]], timings: dict | None = None
    ) -> dict[str, list[Detection]]:
        """``wanted``: label -> (threshold, min_size), None for the card's; detections per label.

        ``timings`` (ms) gets ``detect_<a>+<b>`` for the joint passes and ``detect_<label>`` for
        the passes one model runs alone.
        """
        timings = {} if timings is None else timings
        h, w = image.shape[:2]
        thresholds = {k: self.members[k].card.threshold if t is None else t for k, (t, _) in wanted.items()}
        plans = {k: self.members[k].plan(w, h, min_size) for k, (_, min_size) in wanted.items()}
        shared = set.intersection(*(set(plan) for plan in plans.values()))
        names = [f"{k}_{head}" for k in wanted for head in HEADS]
        joint: dict[Pass, dict] = {}
        t0 = time.perf_counter()
        for p in shared:
            blob, sizes = prepare(image, p)
            outputs = dict(zip(names, run_session(self.session, self._lock, names, blob, "shared"), strict=True))
            joint[p] = {
                k: decode_pass([outputs[f"{k}_{head}"] for head in HEADS], p, sizes, thresholds[k]) for k in wanted
            }
        timings["detect_" + "+".join(wanted)] = elapsed_ms(t0)
        found = {}
        for label, plan in plans.items():
            t0 = time.perf_counter()
            member = self.members[label]
            parts = [joint[p][label] if p in joint else member.run_pass(image, p, thresholds[label]) for p in plan]
            found[label] = member.finish(parts, w, h)
            timings[f"detect_{label}"] = elapsed_ms(t0)
        return found


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
    members = {label: get_detector(label) for label in labels}
    if stale_members(card, members):
        return None  # left over from older member models: each model runs on its own
    return SharedTrunkDetector(card, members)


def available_models() -> list[str]:
    """Labels with a model of their own (joint models are listed by their members)."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.json") if "label" in json.loads(p.read_text()))
