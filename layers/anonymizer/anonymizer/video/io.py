"""Video decode and encode with PyAV: frames upright in BGR, H.264/MP4 out, audio kept or dropped.

Privacy: nothing of the input container reaches the output except the video frames (re-encoded)
and, with ``audio="keep"``, the audio packets copied unchanged. Container and stream tags (GPS
``location``/``©xyz``, make, model, creation time, handler names), chapters, subtitles and data
streams are never copied.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import ImageTooLargeError, InvalidImageError, InvalidOptionsError, UnsupportedImageError
from ..imageio import sniff_video  # noqa: F401 - re-exported: the video path's gate

AUDIO_MODES = ("keep", "drop")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
DEFAULT_CRF = 20  # x264 constant rate factor: visually close to the input at typical bitrates
DEFAULT_PRESET = "veryfast"  # encoding is a small share of the time next to detection


class InvalidVideoError(InvalidImageError):
    """Not a video, or no decodable video stream."""

    code = "invalid_video"


@dataclass(frozen=True)
class VideoInfo:
    """What the container says, before decoding any frame."""

    width: int  # as displayed (rotation applied)
    height: int
    frames: int | None  # from the container; None when it does not say
    fps: float
    duration: float | None  # seconds
    codec: str
    rotation: int  # degrees the stored frames are turned to be shown upright (0, 90, 180, 270)
    has_audio: bool
    audio_codec: str | None


class Frame:
    """One decoded frame with its presentation time in the video stream's time base. Its BGR
    pixels (upright) are converted on first use: pass 1 skips that for frames it does not detect."""

    __slots__ = ("_decoded", "_pixels", "_rotation", "index", "pts")

    def __init__(self, index: int, pts: int, decoded, rotation: int = 0):
        self.index, self.pts = index, pts
        self._decoded, self._rotation = decoded, rotation
        self._pixels: np.ndarray | None = None

    @property
    def pixels(self) -> np.ndarray:
        """H x W x 3 uint8 BGR, upright; a writable array of its own."""
        if self._pixels is None:
            self._pixels = _upright(self._decoded.to_ndarray(format="bgr24"), self._rotation)
            self._decoded = None
        return self._pixels


def _open(path: str | Path):
    import av

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FileNotFoundError as exc:
        raise InvalidVideoError(f"no such file: {path}") from exc
    except (av.error.FFmpegError, ValueError) as exc:  # not a container FFmpeg can read
        raise InvalidVideoError("not a video file we can read") from exc
    if not container.streams.video:
        container.close()
        raise InvalidVideoError("the file has no video stream")
    return container


def _rotation(stream, first_frame=None) -> int:
    """Clockwise degrees to turn stored frames to show them upright (display matrix side data)."""
    rot = None
    if first_frame is not None:
        rot = getattr(first_frame, "rotation", None)
    if rot is None:
        rot = int(stream.metadata.get("rotate", 0) or 0) if hasattr(stream, "metadata") else 0
        return rot % 360
    # PyAV reports the display matrix rotation counter-clockwise
    return (-int(round(rot))) % 360


def _upright(pixels: np.ndarray, rotation: int) -> np.ndarray:
    if rotation == 90:
        return np.ascontiguousarray(np.rot90(pixels, -1))
    if rotation == 180:
        return np.ascontiguousarray(pixels[::-1, ::-1])
    if rotation == 270:
        return np.ascontiguousarray(np.rot90(pixels, 1))
    return pixels


def probe_video(path: str | Path) -> VideoInfo:
    """Header facts plus the first frame's rotation (decodes one frame)."""
    import av

    container = _open(path)
    try:
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise InvalidVideoError("the first frame cannot be decoded") from exc
        if first is None:
            raise InvalidVideoError("the video stream has no decodable frame")
        rotation = _rotation(stream, first)
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        audio = container.streams.audio[0] if container.streams.audio else None
        return VideoInfo(
            width=width,
            height=height,
            frames=stream.frames or None,
            fps=fps,
            duration=duration,
            codec=stream.codec_context.name,
            rotation=rotation,
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else None,
        )
    finally:
        container.close()


def read_frames(
    path: str | Path,
    *,
    seek_pts: int | None = None,
    first_index: int = 0,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[Frame]:
    """Frames of the first video stream, upright, BGR, in presentation order, with their index.

    ``seek_pts``: decoding starts at the keyframe with this pts (a segment), whose index in the
    whole video is ``first_index``; frames before ``start`` are decoded but not converted, and
    decoding ends at ``stop``. Memory: one converted frame at a time (plus the decoder's
    reference frames).
    """
    import av

    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if seek_pts is not None:
            container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
        rotation = None
        index = first_index
        last_pts = -1
        tb = stream.time_base or Fraction(1, 1000)
        step = max(1, round(1 / (float(stream.average_rate or 25) * tb)))
        try:
            for frame in container.decode(stream):
                if rotation is None:
                    rotation = _rotation(stream, frame)
                pts = frame.pts if frame.pts is not None else last_pts + step
                last_pts = pts
                if seek_pts is not None and pts < seek_pts:
                    continue  # leading frames of an open GOP, shown before the keyframe
                if stop is not None and index >= stop:
                    return
                if index >= start:
                    yield Frame(index, pts, frame, rotation)
                index += 1
        except av.error.FFmpegError as exc:
            raise InvalidVideoError(f"the video stream is corrupt after frame {index}") from exc
    finally:
        container.close()


class AudioCopy:
    """The first audio stream of ``source``, copied packet by packet into ``out`` (no decoding),
    released up to a given time so that the muxer interleaves it with the video as it comes."""

    def __init__(self, out, source: str | Path):
        import av

        self._src = av.open(str(source), metadata_errors="ignore")
        self.stream = None
        self._packets: Iterator | None = None
        self._pending = None
        self._out = out
        if self._src.streams.audio:
            in_audio = self._src.streams.audio[0]
            self.stream = out.add_stream_from_template(in_audio)
            self.stream.metadata.clear()
            self._packets = (p for p in self._src.demux(in_audio) if p.dts is not None)

    def until(self, packet) -> None:
        """Mux audio packets up to ``packet``'s decode time (None: all that is left)."""
        if self._packets is None:
            return
        limit = math.inf if packet is None else float((packet.dts or 0) * packet.time_base)
        while True:
            if self._pending is None:
                self._pending = next(self._packets, None)
                if self._pending is None:
                    self._packets = None
                    return
            p = self._pending
            if float(p.dts * p.time_base) > limit:
                return
            p.stream = self.stream
            self._out.mux(p)
            self._pending = None

    def close(self) -> None:
        self._src.close()


class VideoWriter:
    """H.264 (x264, yuv420p) in MP4 with ``+faststart``; timestamps copied from the input.

    Audio (``audio="keep"``) is copied packet by packet from ``audio_source`` and interleaved
    with the video as it is written, so nothing accumulates in memory.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        time_base: Fraction,
        fps: float,
        audio_source: str | Path | None = None,
        audio: str = "keep",
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        b_frames: bool = True,
    ):
        """``b_frames=False`` for segments: decode order equals presentation order, so parts
        can be joined by stream copy with their timestamps unchanged."""
        import av

        if audio not in AUDIO_MODES:
            raise InvalidOptionsError(f"audio must be one of {', '.join(AUDIO_MODES)}")
        self._out = av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"})
        self._width, self._height = width, height
        self._enc_w, self._enc_h = width + width % 2, height + height % 2  # yuv420p needs even sizes
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        self._video = self._out.add_stream("libx264", rate=rate)
        self._video.width, self._video.height = self._enc_w, self._enc_h
        self._video.pix_fmt = "yuv420p"
        self._video.time_base = time_base
        self._video.codec_context.time_base = time_base
        self._video.options = {"crf": str(crf), "preset": preset, **({} if b_frames else {"bf": "0"})}
        self._time_base = time_base
        self._audio: AudioCopy | None = None
        if audio == "keep" and audio_source is not None:
            self._audio = AudioCopy(self._out, audio_source)
        self._out.metadata.clear()
        self.frames = 0

    def write(self, pixels: np.ndarray, pts: int) -> None:
        import av

        if pixels.shape[:2] != (self._height, self._width):
            raise ValueError("frame size changed within the video")
        if (self._enc_w, self._enc_h) != (self._width, self._height):
            pixels = np.pad(pixels, ((0, self._enc_h - self._height), (0, self._enc_w - self._width), (0, 0)), "edge")
        frame = av.VideoFrame.from_ndarray(pixels, format="bgr24")
        frame.pts = pts
        frame.time_base = self._time_base
        for packet in self._video.encode(frame):
            self._mux_audio_until(packet)
            self._out.mux(packet)
        self.frames += 1

    def _mux_audio_until(self, packet) -> None:
        if self._audio is not None:
            self._audio.until(packet)

    def close(self) -> None:
        """Flush the encoder and the remaining audio, write the index (moov first)."""
        try:
            for packet in self._video.encode(None):
                self._mux_audio_until(packet)
                self._out.mux(packet)
            self._mux_audio_until(None)
        finally:
            self._out.close()
            if self._audio is not None:
                self._audio.close()

    def abort(self) -> None:
        """Close without flushing (the caller deletes the partial file)."""
        with contextlib.suppress(Exception):  # the file is discarded anyway
            self._out.close()
        if self._audio is not None:
            self._audio.close()


def stream_time_base(path: str | Path) -> Fraction:
    container = _open(path)
    try:
        return container.streams.video[0].time_base or Fraction(1, 1000)
    finally:
        container.close()


def container_tags(path: str | Path) -> dict[str, str]:
    """Every tag of the container and its streams, as ``scope:key -> value`` (for checks and tests)."""
    container = _open(path)
    try:
        tags = {f"container:{k}": v for k, v in container.metadata.items()}
        for stream in container.streams:
            tags.update({f"stream{stream.index}:{k}": v for k, v in stream.metadata.items()})
        return tags
    finally:
        container.close()


def check_supported(info: VideoInfo, max_pixels: int | None = None) -> None:
    """Refuse frames too small to hold anything, or larger than the pixel budget (memory)."""
    if info.width < 16 or info.height < 16:
        raise UnsupportedImageError("video frames are smaller than 16 x 16")
    if max_pixels is not None and info.width * info.height > max_pixels:
        raise ImageTooLargeError(f"video frames are {info.width} x {info.height}; the limit is {max_pixels} pixels")
