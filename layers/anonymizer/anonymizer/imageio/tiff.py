"""TIFF: IFD0 probe (size, orientation), page count, strip completeness, ICC, metadata, writer."""

from __future__ import annotations

import struct

import numpy as np

from ..errors import InvalidImageError
from . import opencv
from .base import Header
from .exif import ifd0_entries, ifd_bytes, ifd_entries_at, ifd_next_offset, ifd_values

SIGNATURES = (b"II*\x00", b"MM\x00*")
MAX_IFDS = 1024  # pages counted at most (a loop in the IFD chain stops earlier)

_METADATA_TAGS = {
    34665: "exif",
    34853: "gps",
    700: "xmp",
    33723: "iptc",
    34377: "photoshop",
    34675: "icc",
    37724: "photoshop",
    330: "subifd",
    270: "text:ImageDescription",
    271: "text:Make",
    272: "text:Model",
    305: "text:Software",
    306: "text:DateTime",
    315: "text:Artist",
    316: "text:HostComputer",
    33432: "text:Copyright",
}


def probe(data: bytes) -> Header:
    try:
        le, entries = ifd0_entries(data)
    except ValueError as exc:
        raise InvalidImageError("corrupt TIFF header") from exc
    width = height = 0
    orientation, orientation_at = 1, None
    for tag, typ, count, field_at in entries:
        if tag in (256, 257, 274) and count >= 1:
            try:
                value = ifd_values(data, le, typ, 1, field_at)[0]
            except ValueError as exc:
                raise InvalidImageError("corrupt TIFF header") from exc
            if tag == 256:
                width = value
            elif tag == 257:
                height = value
            elif typ == 3:
                orientation = value if 1 <= value <= 8 else 1
                orientation_at = field_at
    pages = 1 + _later_pages(data, le)
    return Header("tiff", width, height, False, orientation, orientation_at, le, pages=pages)


def _later_pages(data: bytes, le: bool) -> int:
    """Full-resolution images after IFD0; reduced-resolution copies (thumbnails) and masks are not pages.

    An unreadable chain stops the count: no decoder could read those IFDs either.
    """
    pages = 0
    seen: set[int] = set()
    try:
        at = ifd_next_offset(data)
        while at and at not in seen and len(seen) < MAX_IFDS:
            seen.add(at)
            subfile = 0
            for tag, typ, count, field_at in ifd_entries_at(data, le, at):
                if tag == 254 and count >= 1:  # NewSubfileType: bit 0 reduced resolution, bit 2 mask
                    subfile = ifd_values(data, le, typ, 1, field_at)[0] & 0x5
                elif tag == 255 and count >= 1:  # SubfileType (old): 2 = reduced resolution
                    subfile = 1 if ifd_values(data, le, typ, 1, field_at)[0] == 2 else 0
            pages += subfile == 0
            at = ifd_next_offset(data, ifd=at)
    except (struct.error, ValueError, IndexError):
        pass
    return pages


def complete(data: bytes, header: Header) -> bool:
    """All strips/tiles of IFD0 lie inside the file."""
    le, entries = ifd0_entries(data)
    by_tag = {tag: (typ, count, field_at) for tag, typ, count, field_at in entries}
    for off_tag, cnt_tag in ((273, 279), (324, 325)):
        if off_tag in by_tag and cnt_tag in by_tag:
            offsets = ifd_values(data, le, *by_tag[off_tag])
            counts = ifd_values(data, le, *by_tag[cnt_tag])
            if len(offsets) != len(counts):
                return False
            if max((o + c for o, c in zip(offsets, counts, strict=True)), default=0) > len(data):
                return False
    return True


def read(data: bytes, header: Header) -> np.ndarray | None:
    """OpenCV's TIFF reader would rotate by the Orientation tag itself: neutralise it, imageio rotates."""
    buf: bytes | bytearray = data
    if header.tiff_orientation_at is not None and header.orientation != 1:
        patched = bytearray(data)
        struct.pack_into("<H" if header.little_endian else ">H", patched, header.tiff_orientation_at, 1)
        buf = patched
    return opencv.read(buf, header)


def icc(data: bytes) -> bytes | None:
    try:
        le, entries = ifd0_entries(data)
        for tag, typ, count, field_at in entries:
            if tag == 34675 and typ in (1, 7) and count > 0:
                return ifd_bytes(data, le, count, field_at)
    except (struct.error, ValueError, IndexError):
        return None
    return None


def markers(data: bytes) -> list[str]:
    _, entries = ifd0_entries(data)
    found = [_METADATA_TAGS[tag] for tag, *_ in entries if tag in _METADATA_TAGS]
    if ifd_next_offset(data):
        found.append("extra-ifd")
    return found


def write(image: np.ndarray, quality: int) -> bytes:
    """Lossless; ``quality`` does not apply."""
    return opencv.write(".tiff", image, [])
