"""Second stage: a small classifier checks each detector proposal on a crop with context.

Why: a detector run at a low threshold (recall first) also fires on things that look like its
object only up close — wing mirrors, wheels and lamps for faces, signs and stickers for plates.
A tiny CNN that sees the proposal with some context around it tells most of them apart for a
fraction of a millisecond per box. The stage is generic: any label gets a verifier from a JSON
card (``<label>-verifier.json``: model file, sha256, input size, context, threshold), named by
the ``verifier`` key of the label's model card, so tuning it never means editing code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import DetectionError
from .networks import load_session, read_model

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class VerifierCard:
    """What a verifier needs to know about its model; read from its JSON card."""

    verifies: str  # the label whose proposals it checks
    file: str
    version: str
    sha256: str
    threshold: float  # a proposal whose probability is under this is dropped whatever its score
    weight: float  # the score becomes detector score x probability ** weight (0: the probability only gates)
    input_size: int  # width of the crop the network sees, px
    context: float  # the crop's width, in units of the proposal's width (or of its height / aspect if taller)
    aspect: float = 1.0  # the crop's height / width (plates: a wide crop, so the plate keeps its pixels)
    refine: float = 0.0  # the network also says where the object's edges are (output "box"): this share of the way

    @classmethod
    def load(cls, path: Path) -> VerifierCard:
        data = json.loads(path.read_text())
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def crop_with_context(image: np.ndarray, box: Box, size: int, context: float, aspect: float = 1.0) -> np.ndarray:
    """A ``size`` wide, ``size * aspect`` high BGR crop centred on ``box``, ``context`` times the
    box wide (or ``context`` times its height / ``aspect``, whichever is larger).

    Parts outside the image are black (the network learns that edge); shrinking averages
    (INTER_AREA), so a big face looks like a small one does, not aliased.
    """
    x1, y1, x2, y2 = box
    side = max(1, round(max(x2 - x1, (y2 - y1) / aspect, 1.0) * context))
    tall = crop_height(side, aspect)
    h, w = image.shape[:2]
    x0, y0 = round((x1 + x2 - side) / 2), round((y1 + y2 - tall) / 2)
    canvas = np.zeros((tall, side, 3), np.uint8)
    ax, ay, bx, by = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + tall)
    if bx > ax and by > ay:
        canvas[ay - y0 : by - y0, ax - x0 : bx - x0] = image[ay:by, ax:bx]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(canvas, (size, crop_height(size, aspect)), interpolation=interpolation)


def crop_height(width: int, aspect: float) -> int:
    """A crop's height in px for its width and aspect (height / width)."""
    return max(1, round(width * aspect))


def crops_blob(image: np.ndarray, boxes: Sequence[Box], size: int, context: float, aspect: float = 1.0) -> np.ndarray:
    """Crops of every box as one float NCHW RGB batch in 0..1 (the network's input)."""
    blob = np.empty((len(boxes), 3, crop_height(size, aspect), size), np.float32)
    for i, box in enumerate(boxes):
        blob[i] = crop_with_context(image, box, size, context, aspect)[:, :, ::-1].transpose(2, 0, 1) / 255.0
    return blob


class Verifier:
    """One verifier network: ``probabilities`` for boxes, ``verify`` for the detector's scores and boxes."""

    def __init__(self, card: VerifierCard, models_dir: Path):
        self.card = card
        name = f"{card.verifies} verifier"
        self.session = load_session(read_model(models_dir / card.file, card.sha256, name), 1)  # one small batch

    @classmethod
    def load(cls, path: Path) -> Verifier:
        try:
            card = VerifierCard.load(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DetectionError(f"verifier card {path.name} is missing or malformed") from exc
        return cls(card, path.parent)

    def probabilities(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """The network's probability that each box holds its label (0..1)."""
        return self.check(image, boxes)[0]

    def check(self, image: np.ndarray, boxes: Sequence[Box]) -> tuple[np.ndarray, np.ndarray]:
        """(probability per box, the boxes moved towards where the network sees the object's edges
        by the card's ``refine`` share, else as given; N x 4)."""
        given = np.asarray(boxes, np.float32).reshape(-1, 4)
        if not len(boxes):
            return np.zeros(0, np.float32), given
        blob = crops_blob(image, boxes, self.card.input_size, self.card.context, self.card.aspect)
        names = ["logit", "box"] if self.card.refine else ["logit"]
        try:
            outputs = self.session.run(names, {"input": blob})
        except Exception as exc:  # onnxruntime raises its own types; never let an image through
            raise DetectionError(f"{self.card.verifies} verifier failed to run") from exc
        probs = (1 / (1 + np.exp(-outputs[0].reshape(-1).astype(np.float64)))).astype(np.float32)
        return probs, refined_boxes(given, outputs[1], self.card.refine) if self.card.refine else given

    def verify(self, image: np.ndarray, boxes: Sequence[Box], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(the scores weighted by the verifier, 0 where it rejects a box; the boxes, refined when it refines)."""
        probs, moved = self.check(image, boxes)
        return verified_scores(np.asarray(scores, np.float32), probs, self.card.weight, self.card.threshold), moved


def refined_boxes(boxes: np.ndarray, deltas: np.ndarray, share: float = 1.0) -> np.ndarray:
    """Boxes moved ``share`` of the way by a box head's edge deltas (left, top, right, bottom edge,
    in units of the box's width and height, clipped to +-1), at least 1 px wide and high. A share
    under 1 shrinks a noisy estimate towards the detector's own box.

    Why a second look at the edges: at 6-10 px of plate height, a box 2 px off is a miss at IoU 0.5,
    and the detector's stride-4 grid places small boxes that coarsely; the verifier sees the
    proposal on a crop at its own scale."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    d = np.clip(np.asarray(deltas, np.float32).reshape(-1, 4), -1.0, 1.0)
    out = boxes + share * d * np.stack([w, h, w, h], 1)
    out[:, 2] = np.maximum(out[:, 2], out[:, 0] + 1.0)
    out[:, 3] = np.maximum(out[:, 3], out[:, 1] + 1.0)
    return out.astype(np.float32)


def verified_scores(scores: np.ndarray, probs: np.ndarray, weight: float, floor: float) -> np.ndarray:
    """Detector score x probability ** ``weight``, 0 under the probability ``floor``.

    Why a product: two independent opinions rank objects better than either alone (AP50 rises),
    and the operating threshold keeps one meaning, a score, with or without a verifier. (A
    geometric mean that would let the verifier lift low-scoring proposals was tried for plates
    and chose the same operating point: plate-verifier.md.)
    """
    weighted = scores * np.power(probs.astype(np.float64), weight)
    return np.where(probs >= floor, weighted, 0.0).astype(np.float32)
