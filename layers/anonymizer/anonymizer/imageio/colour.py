"""Colour: pixels described by an ICC profile (Display P3, Adobe RGB, ...) become sRGB.

Outputs carry no profile (it is metadata we strip), and a viewer shows untagged pixels as sRGB;
without converting first, a P3 or Adobe RGB photo would lose saturation. Cameras and phones tag
their photos with matrix/TRC profiles (three primaries and three tone curves), which this module
reads and applies itself with numpy and OpenCV, relative colorimetric (out-of-gamut colours are
clipped): no colour-management library is shipped in the Lambda layer for it.

Left alone (taken as sRGB): profiles that already are sRGB, grey or CMYK profiles (OpenCV has
already turned CMYK into RGB), LUT-based profiles without primaries, and profiles that cannot be
read. Colour is not a privacy matter, so a profile never fails a request.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import cv2
import numpy as np

# sRGB primaries adapted to the ICC connection space (D50), as in the sRGB IEC61966-2.1 profile
_SRGB_TO_XYZ_D50 = np.array(
    [
        [0.4360747, 0.3850649, 0.1430804],
        [0.2225045, 0.7168786, 0.0606169],
        [0.0139322, 0.0971045, 0.7141733],
    ]
)
_STRIP_ROWS = 256  # rows converted at a time: bounded float32 memory, and the strip stays in cache


class _Unusable(Exception):
    """The profile is not a matrix/TRC RGB profile we can apply; the pixels are left as they are."""


def _s15(data: bytes, at: int) -> float:
    return struct.unpack_from(">i", data, at)[0] / 65536.0


def _tags(profile: bytes) -> dict[bytes, bytes]:
    if len(profile) < 132 or profile[36:40] != b"acsp":
        raise _Unusable
    (count,) = struct.unpack_from(">I", profile, 128)
    tags = {}
    for k in range(min(count, 200)):
        sig, offset, size = struct.unpack_from(">4sII", profile, 132 + 12 * k)
        if offset + size > len(profile):
            raise _Unusable
        tags[sig] = profile[offset : offset + size]
    return tags


def _name(tags: dict[bytes, bytes]) -> str:
    desc = tags.get(b"desc", b"")
    try:
        if desc[:4] == b"desc":
            (n,) = struct.unpack_from(">I", desc, 8)
            return desc[12 : 12 + n].split(b"\x00")[0].decode("latin-1").strip()
        if desc[:4] == b"mluc":
            size, offset = struct.unpack_from(">II", desc, 20)
            return desc[offset : offset + size].decode("utf-16-be").strip("\x00 ")
    except (struct.error, UnicodeDecodeError):
        pass
    return ""


def _curve(tag: bytes) -> np.ndarray:
    """The tone curve as 256 linear-light values for 8-bit inputs (curv or para tag)."""
    x = np.arange(256, dtype=np.float64) / 255.0
    kind = tag[:4]
    if kind == b"curv":
        (n,) = struct.unpack_from(">I", tag, 8)
        if n == 0:
            return x
        if n == 1:
            return x ** (struct.unpack_from(">H", tag, 12)[0] / 256.0)
        table = np.array(struct.unpack_from(f">{n}H", tag, 12), dtype=np.float64) / 65535.0
        return np.interp(x * (n - 1), np.arange(n), table)
    if kind == b"para":
        (function,) = struct.unpack_from(">H", tag, 8)
        count = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}.get(function)
        if count is None:
            raise _Unusable
        p = [_s15(tag, 12 + 4 * i) for i in range(count)] + [0.0] * (7 - count)
        g, a, b, c, d, e, f = p
        if function == 0:
            return x**g
        if function in (1, 2):
            base = np.clip(a * x + b, 0, None) ** g
            return np.where(x >= -b / a, base + (c if function == 2 else 0), c if function == 2 else 0.0)
        return np.where(x >= d, np.clip(a * x + b, 0, None) ** g + (e if function == 4 else 0), c * x + f)
    raise _Unusable


def _xyz(tag: bytes) -> list[float]:
    if tag[:4] != b"XYZ " or len(tag) < 20:
        raise _Unusable
    return [_s15(tag, 8), _s15(tag, 12), _s15(tag, 16)]


@lru_cache(maxsize=16)
def _conversion(profile: bytes) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(1x256x3 float32 linearising LUT in BGR order, 3x3 BGR matrix to linear sRGB, name), or None."""
    try:
        if profile[16:20] != b"RGB ":
            return None
        tags = _tags(profile)
        name = _name(tags)
        if "srgb" in name.lower().replace(" ", ""):
            return None
        columns = [_xyz(tags[sig]) for sig in (b"rXYZ", b"gXYZ", b"bXYZ")]
        curves = [_curve(tags[sig]) for sig in (b"rTRC", b"gTRC", b"bTRC")]
    except (_Unusable, KeyError, struct.error, ValueError, ZeroDivisionError):
        return None
    rgb_to_srgb = np.linalg.solve(_SRGB_TO_XYZ_D50, np.array(columns).T)
    if not np.all(np.isfinite(rgb_to_srgb)) or not all(np.all(np.isfinite(c)) for c in curves):
        return None
    flip = np.eye(3)[::-1]  # RGB <-> BGR
    lut = np.dstack([c.reshape(1, 256) for c in reversed(curves)]).astype(np.float32)
    return lut, (flip @ rgb_to_srgb @ flip).astype(np.float32), name or "unnamed ICC profile"


_SRGB_KNEE = 0.0031308  # linear light where the sRGB curve turns from a line into a power law
_SRGB_KNEE_VALUE = 12.92 * _SRGB_KNEE


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear light (float32, any range; overwritten) -> 8-bit sRGB, with vectorised arithmetic only.

    The curve is a line below the knee and a power law above it; both meet at the knee and each
    is the larger one on its own side, so max(power, min(line, value at the knee)) is the curve.
    The power is exp(log(x) / 2.4): OpenCV's pow is ten times slower for a fractional exponent.
    Scalars are numpy float32 on purpose (cv2's arithmetic would take a Python float as a
    4-channel scalar and change the first channel only).
    """
    x = np.maximum(linear, np.float32(1e-7), out=linear)
    power = cv2.exp(cv2.log(x) * np.float32(1 / 2.4))
    power *= np.float32(1.055)
    power -= np.float32(0.055)
    line = x * np.float32(12.92)
    np.minimum(line, np.float32(_SRGB_KNEE_VALUE), out=line)
    np.maximum(power, line, out=power)
    return cv2.convertScaleAbs(power, alpha=255.0)  # rounds, and saturates at 255


def to_srgb(pixels: np.ndarray, profile: bytes) -> tuple[np.ndarray, str | None]:
    """BGR uint8 pixels converted from ``profile`` to sRGB, and the profile's name when converted.

    Returns the pixels unchanged (and None) when the profile is sRGB, not RGB, or not usable.
    """
    conversion = _conversion(bytes(profile))
    if conversion is None:
        return pixels, None
    lut, matrix, name = conversion
    out = np.empty_like(pixels)
    for top in range(0, pixels.shape[0], _STRIP_ROWS):
        strip = np.ascontiguousarray(pixels[top : top + _STRIP_ROWS])
        out[top : top + _STRIP_ROWS] = _srgb_encode(cv2.transform(cv2.LUT(strip, lut), matrix))
    return out, name
