"""WebP: RIFF chunks, size/orientation/animation probe, ICC (ICCP), metadata, encoder settings."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import cv2
import numpy as np

from ..errors import InvalidImageError
from . import opencv
from .base import Header, Truncated
from .exif import exif_has_gps, exif_orientation

MAX_SIDE = 16_383  # libwebp's limit; beyond it imencode fails

_HARMLESS = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH"}


def sniff(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def chunks(data: bytes, *, strict: bool) -> Iterator[tuple[bytes, int, int]]:
    """Yield (fourcc, data_start, data_end) for each RIFF chunk of a WebP file."""
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end_of_riff = 8 + riff_size
    if strict and len(data) < end_of_riff:
        raise Truncated
    n = min(len(data), end_of_riff)
    i = 12
    while i + 8 <= n:
        fourcc, size = struct.unpack_from("<4sI", data, i)
        if i + 8 + size > n:
            if strict:
                raise Truncated
            return
        yield fourcc, i + 8, i + 8 + size
        i += 8 + size + (size & 1)


def probe(data: bytes) -> Header:
    if len(data) < 30:
        raise Truncated
    fourcc, _ = struct.unpack_from("<4sI", data, 12)
    payload = 20
    if fourcc == b"VP8 ":
        if data[payload + 3 : payload + 6] != b"\x9d\x01\x2a":
            raise InvalidImageError("corrupt WebP header (VP8 start code)")
        width, height = struct.unpack_from("<HH", data, payload + 6)
        return Header("webp", width & 0x3FFF, height & 0x3FFF, False)
    if fourcc == b"VP8L":
        if data[payload] != 0x2F:
            raise InvalidImageError("corrupt WebP header (VP8L signature)")
        (bits,) = struct.unpack_from("<I", data, payload + 1)
        return Header("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, False)
    if fourcc == b"VP8X":
        flags = data[payload]
        width = int.from_bytes(data[payload + 4 : payload + 7], "little") + 1
        height = int.from_bytes(data[payload + 7 : payload + 10], "little") + 1
        animated = bool(flags & 0x02)
        orientation = 1
        for cc, start, end in chunks(data, strict=False):
            if cc in (b"ANIM", b"ANMF"):
                animated = True
            elif cc == b"EXIF" and orientation == 1:
                orientation = exif_orientation(data[start:end])
        return Header("webp", width, height, animated, orientation)
    raise InvalidImageError("corrupt WebP header (unknown first chunk)")


def complete(data: bytes, header: Header) -> bool:
    for _ in chunks(data, strict=True):
        pass
    return True


def read(data: bytes, header: Header) -> np.ndarray | None:
    return opencv.read(data, header)


def icc(data: bytes) -> bytes | None:
    for fourcc, start, end in chunks(data, strict=False):
        if fourcc == b"ICCP":
            return data[start:end] or None
    return None


def markers(data: bytes) -> list[str]:
    found: list[str] = []
    for fourcc, start, end in chunks(data, strict=False):
        if fourcc == b"EXIF":
            found.append("exif")
            if exif_has_gps(data[start:end]):
                found.append("gps")
        elif fourcc == b"XMP ":
            found.append("xmp")
        elif fourcc == b"ICCP":
            found.append("icc")
        elif fourcc in (b"ANIM", b"ANMF"):
            found.append("animation")
        elif fourcc not in _HARMLESS:
            found.append(f"chunk:{fourcc.decode('latin-1').strip()}")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if 8 + riff_size < len(data):
        found.append("trailing-data")
    return found


def write(image: np.ndarray, quality: int) -> bytes:
    """Lossy at ``quality``; keeps alpha."""
    return opencv.write(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, quality])
