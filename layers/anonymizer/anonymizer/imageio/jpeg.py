"""JPEG: header segments, size/orientation probe, quality estimate, ICC, metadata, encoder settings."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import cv2
import numpy as np

from ..errors import InvalidImageError, UnsupportedImageError
from . import opencv
from .base import Header, Truncated
from .exif import exif_has_gps, exif_orientation

SIGNATURES = (b"\xff\xd8\xff",)
MAX_SIDE = 65_500  # libjpeg's limit; beyond it imencode fails
# Optimized Huffman tables save 2-3 % of size but triple the encode time (1080p: 18 vs 7 ms; 24 MP:
# 528 vs 180 ms); below this size the cost is a few ms.
OPTIMIZE_MAX_PIXELS = 1_000_000

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """Yield (marker, payload_start, payload_end) for each header segment, up to and including SOS."""
    n = len(data)
    i = 2
    while True:
        if i >= n:
            raise Truncated
        if data[i] != 0xFF:
            raise InvalidImageError("corrupt JPEG header (marker expected)")
        while i < n and data[i] == 0xFF:
            i += 1
        if i >= n:
            raise Truncated
        marker = data[i]
        i += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            continue  # standalone markers
        if marker == 0xD9:
            raise InvalidImageError("corrupt JPEG (end of image before any image data)")
        if i + 2 > n:
            raise Truncated
        (length,) = struct.unpack_from(">H", data, i)
        if length < 2:
            raise InvalidImageError("corrupt JPEG header (bad segment length)")
        if i + length > n:
            raise Truncated
        yield marker, i + 2, i + length
        if marker == 0xDA:
            return
        i += length


def probe(data: bytes) -> Header:
    size = None
    precision = 8
    orientation = 1
    seen_exif = False
    for marker, start, end in segments(data):
        if marker in _SOF and size is None:
            if end - start < 6:
                raise InvalidImageError("corrupt JPEG header (short frame header)")
            precision, height, width = struct.unpack_from(">BHH", data, start)
            size = (width, height)
        elif marker == 0xE1 and not seen_exif and data[start : start + 6] == b"Exif\x00\x00":
            seen_exif = True
            orientation = exif_orientation(data[start + 6 : end])
        elif marker == 0xDA:
            break
    if size is None:
        raise InvalidImageError("corrupt JPEG header (no frame header before image data)")
    return Header("jpeg", size[0], size[1], False, orientation, precision=precision)


def eoi(data: bytes) -> int:
    """Offset just after the EOI marker, or -1 if the file was cut before it.

    After the first SOS only entropy-coded data (where 0xFF is stuffed as FF00), RSTn markers and
    further table/scan segments follow, so the first FFD9 found there is the real end of image.
    """
    sos_end = 0
    for marker, _, end in segments(data):
        if marker == 0xDA:
            sos_end = end
    at = data.find(b"\xff\xd9", sos_end)
    return -1 if at < 0 else at + 2


def complete(data: bytes, header: Header) -> bool:
    return eoi(data) > 0


def read(data: bytes, header: Header) -> np.ndarray | None:
    if header.precision != 8:
        raise UnsupportedImageError(f"{header.precision}-bit JPEG is not supported")
    return opencv.read(data, header)


# IJG (Annex K) luminance table, natural order, and the zigzag order DQT stores it in.
_STD_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
).ravel()
_ZIGZAG = np.array(
    [0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6]
    + [7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38]
    + [31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63]
)


def _ijg_tables(max_value: int) -> np.ndarray:
    """100 x 64 luminance tables (zigzag order) that libjpeg writes for quality 1..100."""
    q = np.arange(1, 101, dtype=np.int64)[:, None]
    scale = np.where(q < 50, 5000 // q, 200 - 2 * q)
    return np.clip((_STD_LUMA[_ZIGZAG][None, :] * scale + 50) // 100, 1, max_value)


_IJG_TABLES_8BIT = _ijg_tables(255)
_IJG_TABLES_16BIT = _ijg_tables(32767)


def estimate_quality(data: bytes) -> int | None:
    """Quality 1..100 whose IJG-scaled table is closest to the file's luminance DQT (table 0)."""
    try:
        for marker, start, end in segments(data):
            if marker != 0xDB:
                continue
            i = start
            while i < end:
                precision, table_id = data[i] >> 4, data[i] & 0x0F
                size = 128 if precision else 64
                values = np.frombuffer(data, dtype=">u2" if precision else np.uint8, count=64, offset=i + 1)
                if table_id == 0:
                    tables = _IJG_TABLES_16BIT if precision else _IJG_TABLES_8BIT
                    errors = np.abs(tables - values.astype(np.int64)[None, :]).sum(axis=1)
                    return int(np.argmin(errors)) + 1
                i += 1 + size
    except (Truncated, InvalidImageError, ValueError, IndexError):
        return None
    return None


def icc(data: bytes) -> bytes | None:
    """The ICC profile, reassembled from its numbered APP2 ``ICC_PROFILE`` chunks (None if absent)."""
    chunks: dict[int, bytes] = {}
    for marker, start, end in segments(data):
        if marker == 0xE2 and data[start : start + 12] == b"ICC_PROFILE\x00" and end - start > 14:
            chunks.setdefault(data[start + 12], data[start + 14 : end])
    return b"".join(chunks[k] for k in sorted(chunks)) or None


def markers(data: bytes) -> list[str]:
    found: list[str] = []
    for marker, start, end in segments(data):
        payload = data[start:end]
        if marker == 0xE0:
            if payload.startswith(b"JFIF\x00"):
                if len(payload) >= 14 and (payload[12] or payload[13]):
                    found.append("thumbnail")
            elif payload.startswith(b"JFXX\x00"):
                found.append("thumbnail")
            else:
                found.append("app0")
        elif marker == 0xE1:
            if payload.startswith(b"Exif\x00"):
                found.append("exif")
                if exif_has_gps(payload[6:]):
                    found.append("gps")
            elif payload.startswith(b"http://ns.adobe.com/xap/1.0/") or b"xmp" in payload[:64].lower():
                found.append("xmp")
            else:
                found.append("app1")
        elif marker == 0xE2:
            if payload.startswith(b"ICC_PROFILE\x00"):
                found.append("icc")
            elif payload.startswith(b"MPF\x00"):
                found.append("mpf")
            else:
                found.append("app2")
        elif marker == 0xED:
            found.append("iptc")
        elif marker == 0xEE and payload.startswith(b"Adobe"):
            pass  # colour transform flags only
        elif 0xE3 <= marker <= 0xEF:
            found.append(f"app{marker - 0xE0}")
        elif marker == 0xFE:
            found.append("comment")
    end_of_image = eoi(data)
    if 0 < end_of_image < len(data):
        found.append("trailing-data")
    return found


def write(image: np.ndarray, quality: int) -> bytes:
    """Baseline (not progressive) JPEG; optimized Huffman tables up to 1 MP; alpha is dropped by the caller."""
    optimize = int(image.shape[0] * image.shape[1] <= OPTIMIZE_MAX_PIXELS)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, optimize, cv2.IMWRITE_JPEG_PROGRESSIVE, 0]
    return opencv.write(".jpg", image, params)
