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


class CenterNetDetector:
    """One model: load once, then ``detect`` any BGR image."""

    def __init__(self, card: ModelCard, models_dir: Path = MODELS_DIR, threads: int | None = None):
        import onnxruntime as ort

        self.card = card
        path = models_dir / card.file
        try:
            model_bytes = path.read_bytes()
        except OSError as exc:
            raise DetectionError(f"{card.label} model missing: {path.name}") from exc
        digest = hashlib.sha256(model_bytes).hexdigest()
        if digest != card.sha256:
            raise DetectionError(f"{card.label} model {path.name} does not match its card (sha256 {digest[:12]})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return self.card.label

    def detect(
        self, image: np.ndarray, threshold: float | None = None, min_size: float | None = None
    ) -> list[Detection]:
        """All objects at or above ``threshold`` (default: the card's operating threshold).

        Images up to ``max_side`` get one pass at the working scale (small ones upscaled). Larger
        ones get a fine pass at the scale where objects of ``min_size`` px (default: the card's)
        stay detectable — in tiles, so memory stays bounded — plus a coarse pass with the long
        side at ``coarse_side`` for objects too large for the fine pass to see whole.
        """
        threshold = self.card.threshold if threshold is None else threshold
        min_size = self.card.min_object if min_size is None else min_size
        h, w = image.shape[:2]
        scale = working_scale(w, h, self.card.min_side, self.card.max_side)
        fine = min(MAX_UPSCALE, self.card.min_detectable / min_size)
        if scale >= fine:  # one pass sees every size
            boxes, scores = self._run(image, scale, threshold)
        else:
            boxes, scores = self._run(image, min(scale, self.card.coarse_side / max(w, h)), threshold)
            for x0, y0, tile in self._tiles(image, fine):
                tile_boxes, tile_scores = self._run(tile, fine, threshold)
                tile_boxes += np.array([x0, y0, x0, y0], np.float32)
                boxes = np.vstack([boxes, tile_boxes])
                scores = np.concatenate([scores, tile_scores])
        boxes = self._adjust(boxes, w, h)
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

    def _tiles(self, image: np.ndarray, scale: float):
        """Overlapping tiles (in original pixels) that cover the image at ``scale``."""
        h, w = image.shape[:2]
        side = int(self.card.tile_side / scale)
        overlap = int(64 / scale)  # small objects (the fine pass's job) fit in the overlap
        xs, ys = _spans(w, side, overlap), _spans(h, side, overlap)
        for y0, y1 in ys:
            for x0, x1 in xs:
                yield x0, y0, image[y0:y1, x0:x1]

    def _run(self, image: np.ndarray, scale: float, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = image if (nw, nh) == (w, h) else cv2.resize(image, (nw, nh), interpolation=interpolation)
        pw, ph = math.ceil(nw / 32) * 32, math.ceil(nh / 32) * 32
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :nh, :nw] = resized[:, :, ::-1].transpose(2, 0, 1)  # BGR -> RGB planes, 0..255
        try:
            with self._lock:
                heatmap, log_size, offset = self.session.run(["heatmap", "scale", "offset"], {self.input_name: blob})
        except Exception as exc:  # onnxruntime raises its own types; never let an image through
            raise DetectionError(f"{self.label} detector failed to run") from exc
        boxes, scores = decode(heatmap[0, 0], log_size[0], offset[0], threshold)
        boxes /= np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
        np.clip(boxes, 0, [w, h, w, h], out=boxes)
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


def available_models() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))
