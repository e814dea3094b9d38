"""Read and write image bytes safely: sniff, probe, decode upright in sRGB, encode without metadata.

One module per format family (``jpeg``, ``png``, ``webp``, ``tiff``, ``legacy`` for GIF/BMP,
``heif`` for HEIC/AVIF) and one table of them (``registry.CODECS``); the functions here only walk
that table. Why this package is careful:

* ``probe`` reads headers only, so a decompression bomb (a 50000 x 50000 PNG that compresses to
  kilobytes) is refused by its pixel count before a single pixel is allocated.
* The format is sniffed from the bytes; a file name or a content type is never trusted. A video
  gets its own error ("video is not supported yet"); ``sniff_video`` tells the video path.
* Animations and multi-page files are refused (fail closed): we would only anonymize the first
  frame or page and must not publish the others, nor drop them silently.
* Truncated files are refused: a decoder may fill the missing part with grey and we must never
  return (and later publish) partial pixels.
* Orientation is applied exactly once, by this package, for every format, so the detector sees
  the image as a viewer shows it and the output (which has no EXIF) looks the same.
* Pixels described by an ICC profile (Display P3, Adobe RGB) are converted to sRGB, because the
  output carries no profile; grey inputs are marked so they can be written grey again.
* ``encode`` writes pixels only; ``metadata_markers`` lets callers prove that an output carries no
  EXIF/GPS/XMP/IPTC/ICC or other hidden data before it is published.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from ..errors import ImageTooLargeError, InvalidImageError, UnsupportedImageError
from .base import DEFAULT_MAX_PIXELS, DecodedImage, Header, ImageInfo, Truncated
from .colour import to_srgb
from .exif import apply_orientation
from .jpeg import estimate_quality
from .registry import ALIASES, CODECS, Codec, codec_for, sniff
from .video import sniff_video

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_QUALITY",
    "OUTPUT_FORMATS",
    "DecodedImage",
    "ImageInfo",
    "decode",
    "encode",
    "metadata_markers",
    "output_format_for",
    "probe",
    "sniff_video",
]

CONTENT_TYPES: dict[str, str] = {name: codec.content_type for name, codec in CODECS.items()}
"""Every format we read -> its MIME type."""

OUTPUT_FORMATS: tuple[str, ...] = tuple(name for name, codec in CODECS.items() if codec.write is not None)
"""Formats ``encode`` writes. GIF, HEIC and AVIF are read but written otherwise (``output_format_for``)."""

DEFAULT_QUALITY = 90
MIN_QUALITY = 50
MAX_QUALITY = 95


def _probe(data: bytes) -> tuple[Codec, Header]:
    codec = sniff(data)
    try:
        header = codec.probe(data)
    except (Truncated, struct.error, IndexError) as exc:
        raise InvalidImageError(f"truncated header ({codec.name})") from exc
    if header.width <= 0 or header.height <= 0:
        raise InvalidImageError(f"corrupt {codec.name} header (zero-sized image)")
    return codec, header


def probe(data: bytes) -> ImageInfo:
    """Format, upright size and animation flag from the header only: cheap, no pixel decoded.

    Raises InvalidImageError for empty, truncated-header or non-image bytes,
    UnsupportedVideoError for video files and UnsupportedImageError for recognised formats we
    do not read (BigTIFF, other ISO media).
    """
    return _probe(data)[1].info


def _check_complete(data: bytes, codec: Codec, header: Header) -> None:
    """Refuse files that end early; decoders would otherwise hand back partly grey pixels."""
    try:
        complete = codec.complete(data, header)
    except (Truncated, struct.error, ValueError, IndexError):
        complete = False
    if not complete:
        raise InvalidImageError(f"truncated or corrupt {codec.name} file (image data ends early)")


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode to upright sRGB BGR (+ alpha), refusing bombs, animations, extra pages and truncated files first.

    The pixel limit is checked on the header, before any decoder allocates anything. 16-bit samples
    are reduced to 8 bits, grey becomes BGR (``grey`` set), alpha is split off, an ICC profile other
    than sRGB is converted to sRGB. Orientation is applied here and only here (OpenCV's own handling
    is bypassed, see the format modules).
    """
    codec, header = _probe(data)
    info = header.info
    if info.animated:
        raise UnsupportedImageError(
            f"animated {info.format} images are not supported: only the first frame could be "
            "anonymized, so we refuse rather than publish the other frames"
        )
    if header.pages > 1:
        raise UnsupportedImageError(
            f"multi-page {info.format} ({header.pages} pages) is not supported: only the first page "
            "could be anonymized, so we refuse rather than drop the others; send one page per file"
        )
    count = max(info.width * info.height, header.frame_pixels)
    if count > max_pixels:
        what = f"{info.width}x{info.height}" if count == info.width * info.height else "a frame"
        raise ImageTooLargeError(
            f"image too large: {what} = {_megapixels(count)} megapixels, "
            f"more than the limit of {_megapixels(max_pixels)}"
        )
    _check_complete(data, codec, header)

    raw = codec.read(data, header)
    if raw is None or raw.size == 0:
        if info.format == "gif":
            raise UnsupportedImageError("this GIF could not be decoded")
        raise InvalidImageError(f"corrupt {info.format} file (decoder failed)")
    if raw.shape[:2] != (header.height, header.width):
        raise InvalidImageError(f"corrupt {info.format} file (decoded size differs from header)")

    if raw.dtype == np.uint16:
        raw = (raw >> 8).astype(np.uint8)
    elif raw.dtype != np.uint8:
        raise UnsupportedImageError(f"{info.format} with {raw.dtype} samples is not supported")

    alpha = None
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    if channels == 1:
        pixels = cv2.cvtColor(raw.reshape(raw.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif channels == 3:
        pixels = raw
    elif channels == 4:
        pixels = raw[:, :, :3]
        alpha = raw[:, :, 3]
    else:
        raise UnsupportedImageError(f"{info.format} with {channels} channels is not supported")

    if not codec.upright:
        pixels = apply_orientation(pixels, header.orientation)
        if alpha is not None:
            alpha = np.ascontiguousarray(apply_orientation(alpha, header.orientation))
    pixels = np.ascontiguousarray(pixels)
    colour = None
    if channels >= 3:
        profile = _icc(codec, data)
        if profile:
            pixels, colour = to_srgb(pixels, profile)
    quality = estimate_quality(data) if info.format == "jpeg" else None
    return DecodedImage(
        pixels=pixels, alpha=alpha, format=info.format, quality=quality, grey=channels == 1, colour=colour
    )


def _icc(codec: Codec, data: bytes) -> bytes | None:
    try:
        return codec.icc(data)
    except (Truncated, struct.error, ValueError, IndexError, InvalidImageError):
        return None  # colour only: an unreadable profile never fails the image


def _megapixels(count: int) -> str:
    """1.5 for 1_500_000; small counts keep their digits (3840 -> 0.00384, not 0.0)."""
    return f"{count / 1e6:.1f}" if count >= 100_000 else f"{count / 1e6:.6g}"


def output_format_for(input_format: str, *, alpha: bool = False) -> str:
    """Format we write for an input format: the same one where we can write it, else its stand-in.

    GIF is written as PNG (OpenCV's GIF writer quantizes to 256 colours; PNG keeps pixels and alpha
    losslessly). HEIC and AVIF are written as JPEG, which every browser and tool shows (Chrome and
    Android show no HEIC; we ship no HEVC or AV1 encoder), or PNG when the image has ``alpha``,
    which JPEG would lose. Accepts the aliases "jpg", "tif" and "heif".
    """
    try:
        codec = codec_for(input_format)
    except KeyError:
        raise ValueError(f"unknown image format {input_format!r}") from None
    if codec.write is not None:
        return codec.name
    if codec.written_as == "jpeg" and alpha:
        return "png"
    return codec.written_as or "png"


def encode(
    pixels: np.ndarray, alpha: np.ndarray | None, fmt: str, *, quality: int | None = None, grey: bool = False
) -> bytes:
    """Encode BGR pixels (+ optional alpha) with no metadata at all.

    fmt is one of OUTPUT_FORMATS (aliases "jpg"/"tif" accepted); a read-only format ("gif",
    "heic", "avif") is refused with ValueError: call ``output_format_for`` first. JPEG drops alpha
    (it has none) and uses ``quality`` clamped to 50..95 (default 90), optimized Huffman tables and
    baseline (not progressive) coding; WebP is lossy with the same quality rule and keeps alpha;
    PNG, BMP and TIFF are lossless and keep alpha as BGRA. ``grey`` writes one grey channel (JPEG,
    PNG, TIFF, BMP without alpha) for an input that was grey. A side longer than the format can hold
    (JPEG 65500, WebP 16383) raises ImageTooLargeError, a request error, not an encoder failure.
    """
    key = ALIASES.get(fmt.lower(), fmt.lower())
    codec = CODECS.get(key)
    if codec is None or codec.write is None:
        raise ValueError(f"cannot encode {fmt!r}; use output_format_for() (GIF is written as PNG)")
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 3):
        raise ValueError("pixels must be an HxWx3 uint8 array")
    if pixels.shape[2] != 3:
        raise ValueError("pixels must be an HxWx3 uint8 array")
    if alpha is not None and (alpha.dtype != np.uint8 or alpha.shape != pixels.shape[:2]):
        raise ValueError("alpha must be an HxW uint8 array matching pixels")
    q = DEFAULT_QUALITY if quality is None else min(max(int(quality), MIN_QUALITY), MAX_QUALITY)
    height, width = pixels.shape[:2]
    if codec.max_side is not None and max(height, width) > codec.max_side:
        raise ImageTooLargeError(
            f"image too large for {key} output: {width}x{height}, but {key} holds at most "
            f"{codec.max_side} pixels per side; choose another output format"
        )

    keep_alpha = alpha is not None and key != "jpeg"
    image = pixels
    if grey:
        plane = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
        image = cv2.cvtColor(plane, cv2.COLOR_GRAY2BGR) if keep_alpha or key == "webp" else plane
    if keep_alpha:
        image = np.dstack([image, alpha])
    out = codec.write(np.ascontiguousarray(image), q)
    leaked = metadata_markers(out)
    if leaked:  # never expected from OpenCV; fail closed rather than publish
        raise RuntimeError(f"encoded {key} unexpectedly carries metadata: {leaked}")
    return out


def metadata_markers(data: bytes) -> list[str]:
    """Names of metadata or hidden data found in an encoded image; [] means clean.

    Reports e.g. "exif", "gps", "xmp", "iptc", "icc", "comment", "text", "thumbnail",
    "animation", "trailing-data", unknown APPn segments / chunks. Unreadable bytes raise
    InvalidImageError, so a caller that publishes only when this returns [] fails closed.
    """
    codec = sniff(data)
    try:
        found = codec.markers(data)
    except (Truncated, struct.error, ValueError, IndexError) as exc:
        raise InvalidImageError(f"cannot inspect {codec.name} metadata (truncated or corrupt)") from exc
    return list(dict.fromkeys(found))
