"""PNG: chunks, size/orientation/animation probe, ICC (iCCP), metadata, encoder settings."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import cv2
import numpy as np

from ..errors import InvalidImageError
from . import opencv
from .base import Header, Truncated
from .exif import exif_has_gps, exif_orientation

SIGNATURES = (b"\x89PNG\r\n\x1a\n",)
COMPRESSION = 6
MAX_ICC_BYTES = 4 << 20  # an iCCP chunk inflating beyond this is a zip bomb, not a profile

_HARMLESS = {
    b"IHDR",
    b"PLTE",
    b"IDAT",
    b"IEND",
    b"tRNS",
    b"gAMA",
    b"cHRM",
    b"sRGB",
    b"cICP",
    b"mDCV",
    b"cLLI",
    b"sBIT",
    b"bKGD",
    b"pHYs",
    b"hIST",
    b"sPLT",
}


def chunks(data: bytes, *, strict: bool) -> Iterator[tuple[bytes, int, int]]:
    """Yield (type, data_start, data_end) up to and including IEND.

    strict: raise Truncated when the file ends before IEND; otherwise just stop.
    """
    n = len(data)
    i = 8
    while True:
        if i + 8 > n:
            if strict:
                raise Truncated
            return
        length, ctype = struct.unpack_from(">I4s", data, i)
        if i + 12 + length > n:
            if strict:
                raise Truncated
            return
        yield ctype, i + 8, i + 8 + length
        if ctype == b"IEND":
            return
        i += 12 + length


def probe(data: bytes) -> Header:
    if len(data) < 33:
        raise Truncated
    length, ctype, width, height = struct.unpack_from(">I4sII", data, 8)
    if ctype != b"IHDR" or length != 13:
        raise InvalidImageError("corrupt PNG header (IHDR must come first)")
    animated = False
    orientation = 1
    seen_idat = False
    for ctype, start, end in chunks(data, strict=False):
        if ctype == b"IDAT":
            seen_idat = True
        elif ctype == b"acTL" and not seen_idat:
            animated = True
        elif ctype == b"eXIf" and orientation == 1:
            orientation = exif_orientation(data[start:end])
    return Header("png", width, height, animated, orientation)


def complete(data: bytes, header: Header) -> bool:
    return any(ctype == b"IEND" for ctype, _, _ in chunks(data, strict=True))


def read(data: bytes, header: Header) -> np.ndarray | None:
    return opencv.read(data, header)


def icc(data: bytes) -> bytes | None:
    """The profile of the first iCCP chunk (name, NUL, method 0, zlib stream); None if absent or broken."""
    for ctype, start, end in chunks(data, strict=False):
        if ctype == b"iCCP":
            payload = data[start:end]
            nul = payload.find(b"\x00", 0, 80)
            if nul < 0:
                return None
            inflater = zlib.decompressobj()
            try:
                profile = inflater.decompress(payload[nul + 2 :], MAX_ICC_BYTES)
            except zlib.error:
                return None
            return profile if inflater.eof else None
        if ctype == b"IDAT":
            return None
    return None


def markers(data: bytes) -> list[str]:
    found: list[str] = []
    end_of_png = len(data)
    for ctype, start, end in chunks(data, strict=False):
        if ctype == b"eXIf":
            found.append("exif")
            if exif_has_gps(data[start:end]):
                found.append("gps")
        elif ctype in (b"tEXt", b"zTXt", b"iTXt"):
            found.append("xmp" if data[start:end].startswith(b"XML:com.adobe.xmp") else "text")
        elif ctype == b"iCCP":
            found.append("icc")
        elif ctype == b"tIME":
            found.append("time")
        elif ctype in (b"acTL", b"fcTL", b"fdAT"):
            found.append("animation")
        elif ctype not in _HARMLESS:
            found.append(f"chunk:{ctype.decode('latin-1')}")
        if ctype == b"IEND":
            end_of_png = end + 4
    if end_of_png < len(data):
        found.append("trailing-data")
    return found


def write(image: np.ndarray, quality: int) -> bytes:
    """Lossless; ``quality`` does not apply."""
    return opencv.write(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, COMPRESSION])
