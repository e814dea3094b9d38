"""Types and limits shared by every format module of :mod:`anonymizer.imageio`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000
"""Refuse images above 100 megapixels (decoded BGR alone would be 300 MB)."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, before any pixel is decoded; width/height are of the upright image."""

    format: str
    width: int
    height: int
    animated: bool


@dataclass
class DecodedImage:
    """Upright pixels (HxWx3 uint8 BGR, C-contiguous), optional HxW alpha, input format and quality.

    ``grey`` says the input had a single colour channel (the BGR planes are then equal), so that
    the output can be written grey again; ``colour`` names the ICC profile the pixels were
    converted from to sRGB (None: none, or already sRGB).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    format: str
    quality: int | None
    grey: bool = False
    colour: str | None = None


@dataclass(frozen=True)
class Header:
    """A format module's probe result: stored (not upright) size, orientation and what decode needs."""

    format: str
    width: int
    height: int
    animated: bool
    orientation: int = 1
    tiff_orientation_at: int | None = None  # byte offset of the TIFF Orientation SHORT value
    little_endian: bool = True
    precision: int = 8  # JPEG sample precision (SOF); 12-bit JPEG is refused
    frame_pixels: int = 0  # GIF: largest frame; HEIF/AVIF: largest item (a tile may claim more than the image)
    pages: int = 1  # TIFF: full-resolution images in the file (page 2+ would otherwise be dropped)

    @property
    def info(self) -> ImageInfo:
        swap = self.orientation >= 5
        return ImageInfo(
            format=self.format,
            width=self.height if swap else self.width,
            height=self.width if swap else self.height,
            animated=self.animated,
        )


class Truncated(Exception):
    """Raised by the parsers when the bytes end too early; turned into InvalidImageError."""
