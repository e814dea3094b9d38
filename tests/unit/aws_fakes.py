"""Test doubles for the AWS adapter unit tests: a fake Anonymizer honouring the pipeline's
contract (``anonymize`` -> Result-like, ``detect`` -> report, AnonymizerError for bad input),
tiny generated images and a fake Lambda context. Not a test module (no ``test_`` prefix)."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from anonymizer.errors import InvalidImageError
from anonymizer.options import Options

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}


def make_jpeg(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def make_png(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


@dataclass
class FakeResult:
    data: bytes
    content_type: str
    format: str
    report: dict = field(default_factory=dict)


class FakeAnonymizer:
    """Decodes with OpenCV, blacks out a fixed 'face' box, re-encodes; counts calls."""

    def __init__(self, faces: int = 1, fail_with: Exception | None = None):
        self.faces = faces
        self.fail_with = fail_with
        self.calls: list[tuple[str, Options]] = []

    def _decode(self, data: bytes) -> tuple[np.ndarray, str]:
        if data[:3] == b"\xff\xd8\xff":
            fmt = "jpeg"
        elif data[:8] == b"\x89PNG\r\n\x1a\n":
            fmt = "png"
        else:
            raise InvalidImageError("not an image (unrecognised header)")
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise InvalidImageError("corrupt image")
        return img, fmt

    def _report(self, img: np.ndarray, options: Options) -> dict:
        h, w = img.shape[:2]
        dets = [{"label": "face", "score": 0.9, "box": [2.0, 2.0, w / 2, h / 2]} for _ in range(self.faces)]
        return {
            "image": {"width": w, "height": h},
            "counts": {t: (self.faces if t == "face" else 0) for t in options.targets},
            "detections": dets,
            "models": {t: f"fake-{t}-1" for t in options.targets},
            "options": options.to_dict(),
        }

    def anonymize(self, data: bytes, options: Options) -> FakeResult:
        self.calls.append(("anonymize", options))
        if self.fail_with is not None:
            raise self.fail_with
        img, fmt = self._decode(data)
        h, w = img.shape[:2]
        img[: h // 2, : w // 2] = 0
        out_fmt = options.output_format or fmt
        out = cv2.imencode(".jpg" if out_fmt == "jpeg" else ".png", img)[1].tobytes()
        return FakeResult(out, CONTENT_TYPES[out_fmt], out_fmt, self._report(img, options))

    def detect(self, data: bytes, options: Options) -> dict:
        self.calls.append(("detect", options))
        if self.fail_with is not None:
            raise self.fail_with
        img, _ = self._decode(data)
        return self._report(img, options)
