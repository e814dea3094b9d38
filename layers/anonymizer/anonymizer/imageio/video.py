"""Is this a video? Sniffed from the bytes, so that videos get their own answer, not an image error.

Public for the video path (issue 8): it can route what ``sniff_video`` names away from the image
path. The image path answers ``UnsupportedVideoError`` ("video is not supported yet").
"""

from __future__ import annotations

from .heif import brands
from .heif import sniff as sniff_heif

# QuickTime files written before 'ftyp' existed start with one of these atoms
_QUICKTIME_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
_AUDIO_BRANDS = frozenset({b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "})


def sniff_video(data: bytes) -> str | None:
    """ "mp4", "mov", "3gp", "webm", "mkv" or "avi" when the bytes are a video container, else None.

    HEIF still images (HEIC, AVIF) share the ISO media container with MP4 and are not videos.
    """
    head = bytes(data[:64])
    if head[4:8] == b"ftyp":
        kinds = brands(bytes(data[:256]))
        if sniff_heif(bytes(data[:256])) is not None or not kinds or kinds <= _AUDIO_BRANDS:
            return None
        major = head[8:12]
        if major == b"qt  ":
            return "mov"
        if major.startswith(b"3g"):
            return "3gp"
        return "mp4"
    if head[4:8] in _QUICKTIME_ATOMS and int.from_bytes(head[:4], "big") >= 8:
        return "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska and WebM
        return "webm" if b"webm" in head else "mkv"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None
