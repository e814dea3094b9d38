"""Errors that callers can map to a clear message (HTTP 4xx) or a failed S3 record.

Every error carries a stable machine-readable ``code`` and the HTTP status that the API
returns for it, so handlers never have to guess.
"""


class AnonymizerError(Exception):
    """Base class: something about one request or one image went wrong."""

    code = "error"
    http_status = 400


class InvalidImageError(AnonymizerError):
    """Empty, truncated, corrupt or non-image bytes."""

    code = "invalid_image"


class UnsupportedImageError(AnonymizerError):
    """A real image we deliberately do not process (e.g. animated, unknown format)."""

    code = "unsupported_image"
    http_status = 415


class UnsupportedVideoError(UnsupportedImageError):
    """A video file sent to the image path (``imageio.sniff_video`` names it): its own code, so a
    client can tell "send it to the video path" from "this image format is not supported"."""

    code = "video_not_supported"


class ImageTooLargeError(AnonymizerError):
    """Too many pixels (decompression bomb guard) or too many bytes."""

    code = "image_too_large"
    http_status = 413


class InvalidOptionsError(AnonymizerError):
    """An option is unknown, malformed or out of range."""

    code = "invalid_options"


class DetectionError(AnonymizerError):
    """A detector could not load or run: the image must not be published (fail closed)."""

    code = "detection_failed"
    http_status = 500
