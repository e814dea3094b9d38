"""OpenCV as the decoder and encoder of the classic formats (JPEG, PNG, WebP, TIFF, GIF, BMP), and AVIF's decoder."""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import InvalidImageError
from .base import Header


def read(data: bytes | bytearray, header: Header) -> np.ndarray | None:
    """Samples as stored (BGR/BGRA/grey, 8 or 16 bit), orientation not applied; None if OpenCV fails.

    IMREAD_UNCHANGED bypasses OpenCV's own EXIF rotation: imageio applies orientation once, itself.
    """
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise InvalidImageError(f"corrupt {header.format} file (decoder failed)") from exc


def write(extension: str, image: np.ndarray, params: list[int]) -> bytes:
    """Encode with OpenCV; it writes pixels only (no EXIF, no ICC), which ``encode`` verifies."""
    ok, buf = cv2.imencode(extension, np.ascontiguousarray(image), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {extension}")
    return buf.tobytes()
