"""The one table of formats: how each is recognised, probed, checked, read, inspected and written.

Adding a format means one module and one ``Codec`` line here; the public functions in
``anonymizer.imageio`` only walk this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidImageError, UnsupportedImageError, UnsupportedVideoError
from . import heif, jpeg, legacy, opencv, png, tiff, webp
from .base import Header
from .video import sniff_video


@dataclass(frozen=True)
class Codec:
    """One input format. ``write`` is None for formats we read but never write (GIF, HEIC, AVIF)."""

    name: str
    content_type: str
    sniff: Callable[[bytes], bool]
    probe: Callable[[bytes], Header]
    complete: Callable[[bytes, Header], bool]  # the file is not cut short (no grey-filled pixels)
    read: Callable[[bytes, Header], np.ndarray | None]  # samples as stored, or upright if ``upright``
    markers: Callable[[bytes], list[str]]
    icc: Callable[[bytes], bytes | None]
    write: Callable[[np.ndarray, int], bytes] | None = None  # (BGR/BGRA/grey image, quality) -> bytes
    max_side: int | None = None  # largest width or height the encoder can write
    upright: bool = False  # ``read`` already applies the format's own rotation (HEIF irot/imir)
    written_as: str | None = None  # output format when the input is this one and none was asked for


def _starts(*magics: bytes) -> Callable[[bytes], bool]:
    return lambda data: data.startswith(magics)


CODECS: dict[str, Codec] = {
    codec.name: codec
    for codec in (
        Codec(
            "jpeg", "image/jpeg", _starts(*jpeg.SIGNATURES), jpeg.probe, jpeg.complete, jpeg.read,
            jpeg.markers, jpeg.icc, jpeg.write, jpeg.MAX_SIDE,
        ),
        Codec(
            "png", "image/png", _starts(*png.SIGNATURES), png.probe, png.complete, png.read,
            png.markers, png.icc, png.write,
        ),
        Codec(
            "webp", "image/webp", webp.sniff, webp.probe, webp.complete, webp.read, webp.markers,
            webp.icc, webp.write, webp.MAX_SIDE,
        ),
        Codec(
            "bmp", "image/bmp", _starts(*legacy.BMP_SIGNATURES), legacy.probe_bmp, legacy.bmp_complete,
            legacy.read, legacy.bmp_markers, legacy.no_icc, legacy.write_bmp,
        ),
        Codec(
            "tiff", "image/tiff", _starts(*tiff.SIGNATURES), tiff.probe, tiff.complete, tiff.read,
            tiff.markers, tiff.icc, tiff.write,
        ),
        Codec(
            "gif", "image/gif", _starts(*legacy.GIF_SIGNATURES), legacy.probe_gif, legacy.gif_complete,
            legacy.read, legacy.gif_markers, legacy.no_icc, written_as="png",
        ),
        Codec(
            "heic", "image/heic", lambda data: heif.sniff(data) == "heic", lambda data: heif.probe(data, "heic"),
            heif.complete, heif.read_heic, heif.markers, heif.icc, upright=True, written_as="jpeg",
        ),
        Codec(
            "avif", "image/avif", lambda data: heif.sniff(data) == "avif", lambda data: heif.probe(data, "avif"),
            heif.complete, opencv.read, heif.markers, heif.icc, written_as="jpeg",
        ),
    )
}  # fmt: skip

ALIASES = {"jpg": "jpeg", "tif": "tiff", "heif": "heic"}
_PREFIXES = (*jpeg.SIGNATURES, *png.SIGNATURES, *legacy.GIF_SIGNATURES, *tiff.SIGNATURES, b"BM", b"RIFF")


def sniff(data: bytes) -> Codec:
    """The codec for these bytes, from their magic numbers only (a name or content type is never trusted)."""
    if not data:
        raise InvalidImageError("empty file")
    for codec in CODECS.values():
        if codec.sniff(data):
            return codec
    kind = sniff_video(data)
    if kind is not None:
        raise UnsupportedVideoError(f"video is not supported yet ({kind}); send a still image")
    if data[:4] in (b"II+\x00", b"MM\x00+"):
        raise UnsupportedImageError("BigTIFF images are not supported")
    if data[4:8] == b"ftyp" and len(data) >= 12:
        brand = data[8:12].decode("ascii", "replace").strip()
        raise UnsupportedImageError(f"unsupported ISO media file (brand {brand!r}): not a HEIC or AVIF image")
    # a prefix of a known signature: the file stops inside its own magic number
    if len(data) < 12 and any(m.startswith(data[: len(m)]) for m in _PREFIXES):
        raise InvalidImageError("truncated header")
    raise InvalidImageError("not an image (unrecognised header)")


def codec_for(fmt: str) -> Codec:
    """The codec of a format name (aliases "jpg", "tif", "heif" accepted); KeyError if unknown."""
    key = fmt.lower()
    return CODECS[ALIASES.get(key, key)]
