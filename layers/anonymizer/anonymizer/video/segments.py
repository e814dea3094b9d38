"""Long videos in parallel: a plan of segments that start at keyframes, one segment
anonymized on its own (with a few frames of context on each side, so tracks carry across the
borders), and the parts joined by stream copy with the source's audio.

The plan is made from the container's packets only (no decoding). Each part is H.264 without
B-frames and keeps the source's timestamps, so joining is concatenating packets: no re-encode,
no drift. The join fails closed: a missing part, parts that do not follow each other, parts
whose codec parameters differ or a frame count different from the plan's raise, and nothing is
written to the destination.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import AnonymizerError
from . import io

DEFAULT_SEGMENT_SECONDS = 60.0  # a 1080p minute takes a few minutes on a 2-vCPU Lambda


class JoinError(AnonymizerError):
    """Parts that cannot be joined into the whole video: nothing is published."""

    code = "video_join_failed"
    http_status = 500


@dataclass(frozen=True)
class Segment:
    """Frames ``[start, stop)`` of the whole video (``start`` is a keyframe). Decoding starts
    at the keyframe ``seek_index`` (pts ``seek_pts``) so that the context frames before
    ``start`` are seen too."""

    index: int
    start: int
    stop: int
    seek_index: int
    seek_pts: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        return cls(**{k: int(data[k]) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Plan:
    frames: int
    keyframes: int
    overlap: int
    segments: list[Segment]

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "keyframes": self.keyframes,
            "overlap": self.overlap,
            "segments": [s.to_dict() for s in self.segments],
        }


def scan(path: str | Path) -> tuple[list[int], list[int]]:
    """Presentation timestamps of every video packet in order, and the indices of keyframes."""
    container = io._open(path)
    try:
        stream = container.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size and p.pts is not None]
    finally:
        container.close()
    packets.sort()
    return [p for p, _ in packets], [i for i, (_, key) in enumerate(packets) if key]


def plan_segments(path: str | Path, *, fps: float, seconds: float = DEFAULT_SEGMENT_SECONDS, overlap: int = 18) -> Plan:
    """Cut at the first keyframe after every ``seconds``; one segment if the video is shorter."""
    pts, keys = scan(path)
    if not pts:
        raise io.InvalidVideoError("the video stream has no frames")
    if not keys or keys[0] != 0:
        keys = [0, *keys]  # the first frame always starts a segment (decoders start there)
    length = max(1, round(seconds * fps))
    starts = [0]
    for k in keys:
        if k - starts[-1] >= length:
            starts.append(k)
    if len(starts) > 1 and len(pts) - starts[-1] < length // 2:
        starts.pop()  # a short tail joins the segment before it
    stops = [*starts[1:], len(pts)]
    segments = []
    for i, (start, stop) in enumerate(zip(starts, stops, strict=True)):
        seek = max((k for k in keys if k <= max(0, start - overlap)), default=0)
        segments.append(Segment(i, start, stop, seek, pts[seek]))
    return Plan(len(pts), len(keys), overlap, segments)


def join_parts(source: str | Path, parts: list[str | Path], dst: str | Path, *, audio: str = "keep") -> int:
    """Concatenate the parts' video packets (stream copy) with the source's audio; returns the
    frame count. Written to a temporary file and moved into place only when complete."""
    import av

    if not parts:
        raise JoinError("no parts to join")
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    inputs = [av.open(str(p)) for p in parts]
    try:
        first = inputs[0].streams.video[0]
        extradata = first.codec_context.extradata
        out = av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        try:
            video = out.add_stream_from_template(first)
            video.metadata.clear()
            copy = io.AudioCopy(out, source) if audio == "keep" else None
            frames, last_dts = 0, None
            for i, part in enumerate(inputs):
                stream = part.streams.video[0]
                if stream.codec_context.extradata != extradata or stream.time_base != first.time_base:
                    raise JoinError(f"part {i} was encoded with other parameters")
                for packet in part.demux(stream):
                    if packet.size == 0:
                        continue
                    if last_dts is not None and packet.dts <= last_dts:
                        raise JoinError(f"part {i} does not follow the part before it")
                    last_dts = packet.dts
                    if copy is not None:
                        copy.until(packet)
                    packet.stream = video
                    out.mux(packet)
                    frames += 1
            if copy is not None:
                copy.until(None)
                copy.close()
        finally:
            out.close()
        os.replace(tmp, dst)
        return frames
    finally:
        for part in inputs:
            part.close()
        tmp.unlink(missing_ok=True)
