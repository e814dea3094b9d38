"""TIFF IFD parsing shared by EXIF blobs (in JPEG, PNG, WebP, HEIF) and TIFF files, and orientation."""

from __future__ import annotations

import struct

import cv2
import numpy as np


def ifd0_entries(buf: bytes, base: int = 0) -> tuple[bool, list[tuple[int, int, int, int]]]:
    """Parse the TIFF header at ``base`` and return (little_endian, [(tag, type, count, field_at)]).

    ``field_at`` is the absolute offset of the 4-byte value/offset field. Offsets inside the TIFF
    structure are relative to ``base`` (as in EXIF APP1 payloads).
    """
    order = buf[base : base + 2]
    if order == b"II":
        le = True
    elif order == b"MM":
        le = False
    else:
        raise ValueError("bad TIFF byte order")
    e = "<" if le else ">"
    magic, ifd = struct.unpack_from(e + "HI", buf, base + 2)
    if magic != 42:
        raise ValueError("bad TIFF magic")
    return le, ifd_entries_at(buf, le, base + ifd)


def ifd_entries_at(buf: bytes, le: bool, at: int) -> list[tuple[int, int, int, int]]:
    """Entries of the IFD starting at absolute offset ``at``."""
    e = "<" if le else ">"
    (count,) = struct.unpack_from(e + "H", buf, at)
    entries = []
    for k in range(count):
        entry_at = at + 2 + 12 * k
        tag, typ, n = struct.unpack_from(e + "HHI", buf, entry_at)
        entries.append((tag, typ, n, entry_at + 8))
    return entries


def ifd_next_offset(buf: bytes, base: int = 0, ifd: int | None = None) -> int:
    """Offset of the IFD after ``ifd`` (default IFD0; 0 if none): thumbnails and extra pages live there."""
    e = "<" if buf[base : base + 2] == b"II" else ">"
    if ifd is None:
        (ifd,) = struct.unpack_from(e + "I", buf, base + 4)
    (count,) = struct.unpack_from(e + "H", buf, base + ifd)
    (nxt,) = struct.unpack_from(e + "I", buf, base + ifd + 2 + 12 * count)
    return nxt


def ifd_values(buf: bytes, le: bool, typ: int, count: int, field_at: int, base: int = 0) -> list[int]:
    """Integer values of a SHORT/LONG/BYTE entry (inline when they fit in 4 bytes)."""
    e = "<" if le else ">"
    if typ == 3:
        code, size = "H", 2
    elif typ == 4:
        code, size = "I", 4
    elif typ in (1, 7):  # BYTE, UNDEFINED
        code, size = "B", 1
    else:
        raise ValueError("unexpected TIFF value type")
    if count * size <= 4:
        at = field_at
    else:
        (rel,) = struct.unpack_from(e + "I", buf, field_at)
        at = base + rel
    return list(struct.unpack_from(f"{e}{count}{code}", buf, at))


def ifd_bytes(buf: bytes, le: bool, count: int, field_at: int, base: int = 0) -> bytes:
    """Raw bytes of an UNDEFINED/BYTE entry (an ICC profile in TIFF tag 34675)."""
    if count <= 4:
        return bytes(buf[field_at : field_at + count])
    (rel,) = struct.unpack_from(("<" if le else ">") + "I", buf, field_at)
    if base + rel + count > len(buf):
        raise ValueError("TIFF value beyond the end of the file")
    return bytes(buf[base + rel : base + rel + count])


def exif_orientation(tiff: bytes) -> int:
    """EXIF Orientation (1..8) from a TIFF-structured EXIF blob; anything broken means 1."""
    try:
        if tiff.startswith(b"Exif\x00\x00"):
            tiff = tiff[6:]
        le, entries = ifd0_entries(tiff)
        for tag, typ, count, field_at in entries:
            if tag == 0x0112 and count >= 1:
                value = ifd_values(tiff, le, typ, 1, field_at)[0]
                return value if 1 <= value <= 8 else 1
    except (struct.error, ValueError, IndexError):
        pass
    return 1


def exif_has_gps(tiff: bytes) -> bool:
    """Whether a TIFF-structured EXIF blob points to a GPS IFD (tag 34853)."""
    try:
        if tiff.startswith(b"Exif\x00\x00"):
            tiff = tiff[6:]
        _, entries = ifd0_entries(tiff)
    except (struct.error, ValueError, IndexError):
        return False
    return any(tag == 34853 for tag, *_ in entries)


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright for EXIF orientation 1..8 (the TIFF/EXIF definition)."""
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(img), -1)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img
