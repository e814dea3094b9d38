"""HEIC and AVIF (ISO base media "HEIF" still images): box parsing, probe, metadata, decoders.

The probe parses the boxes itself (``meta``: ``pitm``, ``iinf``, ``iloc``, ``iprp``/``ipco``/``ipma``)
so that the decompression-bomb guard holds from the header for these formats too: the primary
image's ``ispe`` gives its size, and the largest ``ispe`` of any item (a tile, a thumbnail, an
auxiliary image) is counted as well, since a decoder may allocate that much.

Decoding: HEIC with pi-heif's libheif + libde265 (LGPL, decoder only: no x265 in the wheel),
which applies ``irot``/``imir`` itself; AVIF with OpenCV's own AVIF reader (libavif, in the
opencv-python-headless wheel already), which does not, so the probe turns them into the EXIF
orientation that shows the same and imageio applies it like any other. libheif is loaded on first
use only. EXIF orientation inside a HEIF file is ignored, as the HEIF standard says.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidImageError, UnsupportedImageError
from .base import Header, Truncated
from .exif import apply_orientation, exif_has_gps

HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})
GENERIC_BRANDS = frozenset({b"mif1", b"mif2", b"msf1"})


def brands(data: bytes) -> set[bytes]:
    """Major and compatible brands of the leading ``ftyp`` box (empty if there is none)."""
    if data[4:8] != b"ftyp" or len(data) < 16:
        return set()
    size = min(struct.unpack_from(">I", data, 0)[0], len(data))
    found = {data[8:12]}
    found.update(data[i : i + 4] for i in range(16, size - 3, 4))
    return found - {b"\x00\x00\x00\x00"}


def sniff(data: bytes) -> str | None:
    """ "avif" or "heic" for a HEIF still-image file, else None (other ISO media, e.g. video)."""
    kinds = brands(data)
    if kinds & AVIF_BRANDS:
        return "avif"
    if kinds & (HEIC_BRANDS | GENERIC_BRANDS):
        return "heic"
    return None


def boxes(data: bytes, start: int, end: int, *, strict: bool = True) -> Iterator[tuple[bytes, int, int]]:
    """Yield (type, payload_start, box_end) of the boxes in data[start:end]."""
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, i)
        header = 8
        if size == 1:
            if i + 16 > end:
                raise Truncated
            (size,) = struct.unpack_from(">Q", data, i + 8)
            header = 16
        elif size == 0:
            size = end - i
        if size < header:
            raise InvalidImageError("corrupt HEIF (bad box size)")
        if i + size > end:
            if strict:
                raise Truncated
            return
        yield kind, i + header, i + size
        i += size


@dataclass
class _Meta:
    """What the ``meta`` box says about the items."""

    primary: int | None = None
    item_types: dict[int, bytes] = field(default_factory=dict)
    mime_types: dict[int, bytes] = field(default_factory=dict)
    locations: dict[int, tuple[int, list[tuple[int, int]]]] = field(default_factory=dict)  # method, extents
    properties: list[tuple[bytes, int, int]] = field(default_factory=list)  # ipco children, 1-based in ipma
    associations: dict[int, list[int]] = field(default_factory=dict)
    idat: tuple[int, int] | None = None
    sequence: bool = False  # a 'moov' track: an image sequence (animation)


def _uint(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at : at + size], "big") if size else 0


def _parse_meta(data: bytes) -> _Meta:
    meta = _Meta()
    meta_box = None
    for kind, start, end in boxes(data, 0, len(data), strict=False):
        if kind == b"meta" and meta_box is None:
            meta_box = (start + 4, end)  # FullBox: version and flags first
        elif kind == b"moov":
            meta.sequence = True
    if meta_box is None:
        raise InvalidImageError("corrupt HEIF (no meta box)")
    for kind, start, end in boxes(data, *meta_box):
        version = data[start]
        if kind == b"pitm":
            meta.primary = _uint(data, start + 4, 2 if version == 0 else 4)
        elif kind == b"iinf":
            first = start + 4 + (2 if version == 0 else 4)
            for sub, s, _e in boxes(data, first, end):
                if sub == b"infe" and data[s] >= 2:
                    id_size = 2 if data[s] == 2 else 4
                    item = _uint(data, s + 4, id_size)
                    at = s + 4 + id_size + 2
                    meta.item_types[item] = data[at : at + 4]
                    if data[at : at + 4] == b"mime":
                        name_end = data.find(b"\x00", at + 4, _e)
                        type_end = data.find(b"\x00", name_end + 1, _e) if name_end >= 0 else -1
                        meta.mime_types[item] = data[name_end + 1 : type_end if type_end >= 0 else _e]
        elif kind == b"iloc":
            _parse_iloc(data, start, end, meta)
        elif kind == b"iprp":
            for sub, s, e in boxes(data, start, end):
                if sub == b"ipco":
                    meta.properties = list(boxes(data, s, e))
                elif sub == b"ipma":
                    _parse_ipma(data, s, e, meta)
        elif kind == b"idat":
            meta.idat = (start, end)
    return meta


MAX_EXTENTS = 65_536  # item extents in one file: real files have a few per item; zero-sized fields cost no bytes


def _parse_iloc(data: bytes, start: int, end: int, meta: _Meta) -> None:
    """Item locations. Every count is checked against the box's bytes (and extents against a cap),
    so a crafted count cannot make this loop for billions of rounds."""
    version = data[start]
    extents_seen = 0
    at = start + 4
    offset_size, length_size = data[at] >> 4, data[at] & 15
    base_size, index_size = data[at + 1] >> 4, (data[at + 1] & 15) if version in (1, 2) else 0
    at += 2
    count = _uint(data, at, 2 if version < 2 else 4)
    at += 2 if version < 2 else 4
    for _ in range(count):
        if at >= end:
            raise Truncated
        item = _uint(data, at, 2 if version < 2 else 4)
        at += 2 if version < 2 else 4
        method = 0
        if version in (1, 2):
            method = _uint(data, at, 2) & 15
            at += 2
        at += 2  # data_reference_index
        base = _uint(data, at, base_size)
        at += base_size
        extents = []
        n = _uint(data, at, 2)
        at += 2
        extents_seen += n
        if extents_seen > MAX_EXTENTS:
            raise InvalidImageError("corrupt HEIF (too many item extents)")
        for _ in range(n):
            at += index_size
            offset = _uint(data, at, offset_size)
            length = _uint(data, at + offset_size, length_size)
            at += offset_size + length_size
            extents.append((base + offset, length))
        meta.locations[item] = (method, extents)
    if at > end:
        raise Truncated


def _parse_ipma(data: bytes, start: int, end: int, meta: _Meta) -> None:
    version, flags = data[start], _uint(data, start + 1, 3)
    at = start + 4
    count = _uint(data, at, 4)
    at += 4
    for _ in range(count):
        if at >= end:
            raise Truncated
        item = _uint(data, at, 2 if version < 1 else 4)
        at += 2 if version < 1 else 4
        n = data[at]
        at += 1
        wide = flags & 1
        indices = []
        for _ in range(n):
            value = _uint(data, at, 2 if wide else 1)
            at += 2 if wide else 1
            indices.append(value & (0x7FFF if wide else 0x7F))
        meta.associations.setdefault(item, []).extend(indices)
    if at > end:
        raise Truncated


def _primary_properties(meta: _Meta) -> list[tuple[bytes, int, int]]:
    if meta.primary is None:
        raise InvalidImageError("corrupt HEIF (no primary item)")
    return [meta.properties[i - 1] for i in meta.associations.get(meta.primary, []) if 0 < i <= len(meta.properties)]


def _orientation(data: bytes, props: list[tuple[bytes, int, int]]) -> int:
    """The EXIF orientation (1..8) equal to the primary item's irot/imir, applied in their listed order."""
    probe_image = np.arange(6).reshape(2, 3)
    shown = probe_image
    for kind, start, end in props:
        if kind == b"irot" and end > start:
            shown = np.rot90(shown, data[start] & 3)  # anticlockwise quarter turns
        elif kind == b"imir" and end > start:
            shown = shown[:, ::-1] if data[start] & 1 else shown[::-1]  # as libheif/libavif: 0 flips top-bottom
    for orientation in range(1, 9):
        if np.array_equal(apply_orientation(probe_image, orientation), shown):
            return orientation
    return 1


def probe(data: bytes, fmt: str) -> Header:
    """Header of the primary image. HEIC: the size as displayed (libheif applies irot/imir);
    AVIF: the size as stored, with irot/imir as an orientation for imageio to apply."""
    meta = _parse_meta(data)
    props = _primary_properties(meta)
    width = height = 0
    for kind, start, end in props:
        if kind == b"ispe" and end - start >= 12:
            width, height = _ispe(data, start)
        elif kind == b"clap" and end - start >= 16 and fmt == "heic":  # libheif crops to the clean aperture
            wn, wd, hn, hd = struct.unpack_from(">IIII", data, start)
            if wd and hd:
                width, height = min(width, round(wn / wd)), min(height, round(hn / hd))
    if width == 0 or height == 0:
        raise InvalidImageError(f"corrupt {fmt} header (no image size)")
    largest = max(
        (w * h for kind, s, e in meta.properties if kind == b"ispe" and e - s >= 12 for w, h in [_ispe(data, s)]),
        default=0,
    )
    orientation = _orientation(data, props)
    if fmt == "avif":
        return Header(fmt, width, height, meta.sequence, orientation, frame_pixels=largest)
    if orientation >= 5:
        width, height = height, width
    return Header(fmt, width, height, meta.sequence, frame_pixels=largest)


def _ispe(data: bytes, start: int) -> tuple[int, int]:
    return struct.unpack_from(">II", data, start + 4)


def complete(data: bytes, header: Header) -> bool:
    """Every top-level box, and every item's data, lies inside the file."""
    for _ in boxes(data, 0, len(data)):
        pass
    meta = _parse_meta(data)
    for method, extents in meta.locations.values():
        limit = len(data) if method == 0 else (meta.idat[1] - meta.idat[0] if meta.idat else 0)
        if method in (0, 1) and any(offset + length > limit for offset, length in extents):
            return False
    return True


def _item_bytes(data: bytes, meta: _Meta, item: int) -> bytes | None:
    method, extents = meta.locations.get(item, (None, []))
    if method == 0:
        return b"".join(data[o : o + n] for o, n in extents)
    if method == 1 and meta.idat:
        base = meta.idat[0]
        return b"".join(data[base + o : base + o + n] for o, n in extents)
    return None


def icc(data: bytes) -> bytes | None:
    """The primary image's ICC profile (a ``colr`` property of type ``prof`` or ``rICC``)."""
    try:
        for kind, start, end in _primary_properties(_parse_meta(data)):
            if kind == b"colr" and data[start : start + 4] in (b"prof", b"rICC"):
                return data[start + 4 : end] or None
    except (Truncated, InvalidImageError, struct.error, IndexError):
        return None
    return None


def markers(data: bytes) -> list[str]:
    """Metadata of a HEIF file: Exif (and GPS inside it), XMP and other mime items, ICC profiles."""
    meta = _parse_meta(data)
    found: list[str] = []
    for item, kind in meta.item_types.items():
        if kind == b"Exif":
            found.append("exif")
            payload = _item_bytes(data, meta, item) or b""
            if len(payload) >= 4:
                (skip,) = struct.unpack_from(">I", payload, 0)
                if exif_has_gps(payload[4 + skip :]):
                    found.append("gps")
        elif kind == b"mime":
            found.append("xmp" if b"rdf+xml" in meta.mime_types.get(item, b"") else "mime")
    if any(kind == b"colr" and data[s : s + 4] in (b"prof", b"rICC") for kind, s, _ in meta.properties):
        found.append("icc")
    if meta.sequence:
        found.append("animation")
    return found


_HEIC_CHANNELS = {"L": 1, "BGR": 3, "BGRA": 4}
HEIC_DECODE_THREADS = 4  # libheif decodes the tiles of a grid image (iPhone: 512 px tiles) side by side


def read_heic(data: bytes, header: Header) -> np.ndarray:
    """Upright BGR(A) or grey uint8 samples of the primary image, via libheif.

    Calls pi-heif's C extension ``_pi_heif`` directly: the ``pi_heif`` package imports Pillow, which
    the Lambda layer does not ship (pinned pi-heif==1.4.0; ``load_file``'s arguments are those of
    ``pi_heif.open_heif``: threads, convert_hdr_to_8bit, bgr_mode, remove_stride, hdr_to_16bit,
    preferred_decoder, disable_security_limits).
    """
    import _pi_heif

    try:
        images = [i for i in _pi_heif.load_file(data, HEIC_DECODE_THREADS, True, True, True, True, "", False) if i]
        if len(images) > 1:
            raise UnsupportedImageError(
                f"HEIC with {len(images)} images is not supported: only the primary one could be "
                "anonymized, so we refuse rather than drop the others"
            )
        if not images:
            raise InvalidImageError("corrupt heic file (no image)")
        image = images[0]
        (width, height), mode = image.size_mode
        channels = _HEIC_CHANNELS.get(mode)
        if channels is None:
            raise UnsupportedImageError(f"HEIC in mode {mode} is not supported")
        samples = np.frombuffer(image.data, dtype=np.uint8)  # decodes
        stride = image.stride
    except (ValueError, EOFError, SyntaxError, RuntimeError) as exc:
        raise InvalidImageError("corrupt heic file (decoder failed)") from exc
    if stride < width * channels or samples.size < stride * height:
        raise InvalidImageError("corrupt heic file (decoder returned too little data)")
    rows = samples[: stride * height].reshape(height, stride)[:, : width * channels]
    return (
        rows.reshape(height, width, channels).squeeze(axis=2).copy()
        if channels == 1
        else rows.reshape(height, width, channels).copy()
    )
