"""GIF and BMP: the old formats, read (single-frame GIF, uncompressed or RLE BMP) and, for BMP, written."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

from ..errors import InvalidImageError
from . import opencv
from .base import Header, Truncated

GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
BMP_SIGNATURES = (b"BM",)

_GIF_HARMLESS_APPS = {b"NETSCAPE2.0", b"ANIMEXTS1.0"}


# --------------------------------------------------------------------------------------------
# GIF


def gif_blocks(data: bytes) -> Iterator[tuple[str, int, int]]:
    """Yield ("image"|"ext:<label>"|"trailer", start, end) blocks; raise Truncated without a trailer."""
    n = len(data)
    if n < 13:
        raise Truncated
    packed = data[10]
    i = 13 + (3 * (2 << (packed & 7)) if packed & 0x80 else 0)

    def skip_sub_blocks(j: int) -> int:
        while True:
            if j >= n:
                raise Truncated
            size = data[j]
            j += 1 + size
            if size == 0:
                return j

    while True:
        if i >= n:
            raise Truncated
        kind = data[i]
        if kind == 0x3B:  # trailer
            yield "trailer", i, i + 1
            return
        if kind == 0x21:
            if i + 2 > n:
                raise Truncated
            label = data[i + 1]
            end = skip_sub_blocks(i + 2)
            yield f"ext:{label:02x}", i, end
            i = end
        elif kind == 0x2C:
            if i + 10 > n:
                raise Truncated
            local = data[i + 9]
            j = i + 10 + (3 * (2 << (local & 7)) if local & 0x80 else 0)
            end = skip_sub_blocks(j + 1)  # + LZW minimum code size byte
            yield "image", i, end
            i = end
        else:
            raise InvalidImageError("corrupt GIF (unknown block)")


def probe_gif(data: bytes) -> Header:
    if len(data) < 13:
        raise Truncated
    width, height = struct.unpack_from("<HH", data, 6)
    frames = frame_pixels = 0
    try:
        for kind, start, _ in gif_blocks(data):
            if kind == "image":
                frames += 1
                left, top, frame_w, frame_h = struct.unpack_from("<HHHH", data, start + 1)
                frame_pixels = max(frame_pixels, (left + frame_w) * (top + frame_h))
                if frames > 1:
                    break
    except Truncated:
        pass  # decode() refuses truncated files; the header itself was complete
    return Header("gif", width, height, frames > 1, frame_pixels=frame_pixels)


def gif_complete(data: bytes, header: Header) -> bool:
    return any(kind == "trailer" for kind, _, _ in gif_blocks(data))


def gif_markers(data: bytes) -> list[str]:
    found: list[str] = []
    frames = 0
    try:
        for kind, start, end in gif_blocks(data):
            if kind == "image":
                frames += 1
            elif kind == "ext:fe":
                found.append("comment")
            elif kind == "ext:01":
                found.append("text")
            elif kind == "ext:ff":
                app = data[start + 3 : start + 14]
                if app == b"XMP DataXMP":
                    found.append("xmp")
                elif app == b"ICCRGBG1012":
                    found.append("icc")
                elif app not in _GIF_HARMLESS_APPS:
                    found.append("application")
            elif kind == "trailer" and end < len(data):
                found.append("trailing-data")
    except Truncated:
        pass
    if frames > 1:
        found.append("animation")
    return found


# --------------------------------------------------------------------------------------------
# BMP


def probe_bmp(data: bytes) -> Header:
    if len(data) < 26:
        raise Truncated
    (dib_size,) = struct.unpack_from("<I", data, 14)
    if dib_size == 12:
        width, height = struct.unpack_from("<HH", data, 18)
    elif dib_size in (16, 40, 52, 56, 64, 108, 124):
        width, height = struct.unpack_from("<ii", data, 18)
    else:
        raise InvalidImageError("not an image (unrecognised header)")
    return Header("bmp", width, abs(height), False)


def bmp_complete(data: bytes, header: Header) -> bool:
    """Uncompressed BMP: the pixel array must fit in the file (RLE/JPEG/PNG payloads are not checked)."""
    (offset, dib_size) = struct.unpack_from("<II", data, 10)
    if dib_size == 12:
        (bpp,) = struct.unpack_from("<H", data, 24)
        compression = 0
    else:
        if len(data) < 34:
            return False
        bpp, compression = struct.unpack_from("<HI", data, 28)
    if compression not in (0, 3, 6):
        return True
    stride = (header.width * bpp + 31) // 32 * 4
    return offset + stride * header.height <= len(data)


def bmp_markers(data: bytes) -> list[str]:
    (dib_size,) = struct.unpack_from("<I", data, 14)
    if dib_size >= 124 and len(data) >= 14 + 60 and data[14 + 56 : 14 + 60] in (b"MBED", b"DEBM"):
        return ["icc"]
    return []


def read(data: bytes, header: Header) -> np.ndarray | None:
    return opencv.read(data, header)


def no_icc(data: bytes) -> bytes | None:
    """GIF and BMP profiles are too rare to convert; their pixels are taken as sRGB."""
    return None


def write_bmp(image: np.ndarray, quality: int) -> bytes:
    return opencv.write(".bmp", image, [])
