"""A video file + options -> an anonymized MP4 + a JSON report, in two streaming passes.

Pass 1 decodes every frame, runs the image detector (every frame, or every k-th) at a lower
"track" threshold, and links detections into tracks; only boxes are kept. Pass 2 decodes
again, covers every track on every frame from its smoothed boxes (gaps filled, padded both
ways: :mod:`.tracking`) and encodes. Memory is one frame plus the boxes of the tracks alive at
that frame, whatever the resolution or the length: nothing waits in a frame buffer, because
the look-ahead is the whole of pass 1.

Fail closed: the output is written to a temporary file beside the destination and moved into
place only when pass 2 has produced exactly the frames pass 1 saw; any error deletes it. The
source is never overwritten.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..detection import elapsed_ms
from ..effects import EffectSpec
from ..effects import apply_effect as apply_region_effect
from ..errors import DetectionError, InvalidOptionsError
from ..options import Options
from ..pipeline import Anonymizer, _effect_spec, _logo, expand_box
from . import DETECT_EVERY, io
from .segments import Segment
from .tracking import Box, Track, Tracker, TrackSettings, confirmed, track_boxes

Progress = Callable[[str, int, int | None], None]  # (phase "detect"|"render", frames done, total)


@dataclass(frozen=True)
class VideoSettings:
    """Video-only choices; the image options (targets, effects, margins, logo) stay in Options."""

    audio: str = "keep"  # keep: audio packets copied unchanged; drop: no audio in the output
    detect_every: int = DETECT_EVERY  # the detector on every k-th frame, and every frame around a change
    tracks: TrackSettings = field(default_factory=TrackSettings)
    smooth: bool = True  # False: only the frames with a detection are covered (for measurements)
    crf: int = io.DEFAULT_CRF
    preset: str = io.DEFAULT_PRESET
    report_boxes: bool = False  # per-detection boxes in the report (compact lists)

    def validate(self) -> None:
        if self.audio not in io.AUDIO_MODES:
            raise InvalidOptionsError(f"audio must be one of {', '.join(io.AUDIO_MODES)}")
        if not 1 <= self.detect_every <= 10:
            raise InvalidOptionsError("detect_every must be 1-10")
        if self.tracks.max_gap < self.detect_every or self.tracks.pad < self.detect_every - 1:
            raise InvalidOptionsError("tracks.max_gap and tracks.pad must span the frames between detections")
        if not 0 <= self.crf <= 51:
            raise InvalidOptionsError("crf must be 0-51")

    def with_values(self, values: Mapping[str, str]) -> VideoSettings:
        """These settings with the video-only options of a request or an object's metadata
        (``audio``, ``detect_every``; see ``start.VIDEO_OPTION_KEYS``) applied and checked."""
        settings = self
        try:
            if "audio" in values:
                settings = replace(settings, audio=values["audio"])
            if "detect_every" in values:
                settings = replace(settings, detect_every=int(values["detect_every"]))
        except ValueError as exc:
            raise InvalidOptionsError("detect_every must be an integer") from exc
        settings.validate()
        return settings


@dataclass
class Detected:
    """Pass 1's result: tracks (confirmed) and how many frames there were."""

    tracks: list[Track]
    frames: int  # frames seen
    thresholds: dict[str, float]
    timings: dict[str, float]
    start: int = 0  # index (in the whole video) of the first frame seen
    stop: int = 0  # one past the last
    looked: int = 0  # frames the detector ran on (every k-th, plus the frames around a change)

    def __post_init__(self) -> None:
        self.stop = self.stop or self.start + self.frames


def _thresholds(anonymizer: Anonymizer, options: Options) -> dict[str, float]:
    out = {}
    for target in options.targets:
        t = options.for_target(target).threshold
        out[target] = t if t is not None else anonymizer.detector(target).card.threshold
    return out


def detect_tracks(
    anonymizer: Anonymizer,
    src: str | Path,
    options: Options,
    settings: VideoSettings,
    *,
    total: int | None = None,
    progress: Progress | None = None,
    segment: Segment | None = None,
    overlap: int = 0,
) -> Detected:
    """Pass 1: detections on every k-th frame, linked into tracks (boxes only). For a
    ``segment``: its frames plus ``overlap`` frames of context on each side."""
    thresholds = _thresholds(anonymizer, options)
    low = {t: v * settings.tracks.low_factor for t, v in thresholds.items()}
    min_score = min(low.values())
    tracker = Tracker(settings.tracks)
    ended: list[Track] = []
    t_detect = 0.0
    started = time.perf_counter()
    frames = looked = 0
    skipped: list[io.Frame] = []  # frames since the last look, not looked at (yet)
    since: int | None = None  # the first frame of the last look (with the frames looked at before it)

    def detections(frame: io.Frame) -> list[tuple[str, float, Box]]:
        nonlocal t_detect, looked
        t0 = time.perf_counter()
        dets = anonymizer.detect_pixels(frame.pixels, options, min_score=min_score)
        t_detect += time.perf_counter() - t0
        looked += 1
        return [(d.label, d.score, d.box) for d in dets if d.score >= low[d.label]]

    def look(frame: io.Frame) -> None:
        """Detect on ``frame``; if it does not see the same objects as the last look, the
        skipped frames between are looked at too, in order, before it is linked."""
        nonlocal since
        dets = detections(frame)
        first = frame.index
        if skipped and since is not None and not tracker.steady(frame.index, dets, since, thresholds):
            for between in skipped:
                ended.extend(tracker.update(between.index, detections(between)))
            first = skipped[0].index
        skipped.clear()
        ended.extend(tracker.update(frame.index, dets))
        since = first  # a track seen from here on and missing at the next look is lost: look between

    if segment is None:
        source = io.read_frames(src)
        first = 0
    else:
        first = max(0, segment.start - overlap)
        source = io.read_frames(
            src, seek_pts=segment.seek_pts, first_index=segment.seek_index, start=first, stop=segment.stop + overlap
        )
    for frame in source:
        frames += 1
        if frame.index % settings.detect_every and since is not None:
            skipped.append(frame)
        else:
            look(frame)
        if progress is not None:
            progress("detect", frames, total)
    if skipped:  # the last frame is always looked at
        look(skipped.pop())
    ended += tracker.finish()
    tracks = sorted(confirmed(ended, thresholds), key=lambda t: t.first)
    timings = {"detect": round(t_detect * 1000, 1), "pass1": elapsed_ms(started)}
    return Detected(tracks, frames, thresholds, timings, start=first, looked=looked)


def _covering_settings(settings: VideoSettings) -> TrackSettings:
    """Without smoothing: the raw detection boxes, on their own frames only (the baseline)."""
    if settings.smooth:
        return settings.tracks
    return replace(settings.tracks, pad=0, size_window=0)


def covered_boxes(
    tracks: list[Track], settings: VideoSettings, frames: int
) -> Callable[[int], list[tuple[Track, Box]]]:
    """A sweep over the frames in order: per frame, the (track, box) pairs to cover.

    Without smoothing only the frames with a detection are covered (the baseline that
    per-frame detection alone gives); with it, gaps are filled and both ends padded.
    """
    ts = _covering_settings(settings)
    order = sorted(tracks, key=lambda t: t.first - ts.pad)
    alive: list[tuple[Track, dict[int, Box]]] = []
    nxt = 0

    def at(f: int) -> list[tuple[Track, Box]]:
        nonlocal nxt, alive
        while nxt < len(order) and order[nxt].first - ts.pad <= f:
            track = order[nxt]
            boxes = track_boxes(track, ts, 0, frames)
            if not settings.smooth:
                boxes = {k: v for k, v in boxes.items() if k in set(track.frames)}
            alive.append((track, boxes))
            nxt += 1
        alive = [(t, b) for t, b in alive if t.last + ts.pad >= f]
        return [(t, b[f]) for t, b in alive if f in b]

    return at


def _track_seed(pixels: np.ndarray, region: tuple[int, int, int, int]) -> bytes:
    """Secret per-track seed: a hash of the object's original pixels where it is first covered."""
    x1, y1, x2, y2 = region
    return hashlib.blake2b(np.ascontiguousarray(pixels[y1:y2, x1:x2]).tobytes(), digest_size=16).digest()


def render(
    src: str | Path,
    dst: str | Path,
    detected: Detected,
    options: Options,
    settings: VideoSettings,
    *,
    progress: Progress | None = None,
    segment: Segment | None = None,
) -> dict[str, Any]:
    """Pass 2: cover every track on every frame it spans, encode H.264/MP4 to ``dst``. For a
    ``segment``: its own frames only, no audio, no B-frames (joined later by stream copy)."""
    info = io.probe_video(src)
    logo = _logo(options.logo) if options.logo else None
    specs = {t: _effect_spec(options, t, logo) for t in options.targets}
    seeds: dict[int, bytes] = {}
    at = covered_boxes(detected.tracks, settings, detected.stop)
    if segment is None:
        source, expected = io.read_frames(src), detected.frames
    else:
        source = io.read_frames(
            src, seek_pts=segment.seek_pts, first_index=segment.seek_index, start=segment.start, stop=segment.stop
        )
        expected = segment.stop - segment.start
    writer = io.VideoWriter(
        dst,
        width=info.width,
        height=info.height,
        time_base=io.stream_time_base(src),
        fps=info.fps,
        audio_source=src,
        audio=settings.audio if segment is None else "drop",
        crf=settings.crf,
        preset=settings.preset,
        b_frames=segment is None,
    )
    covered_frames = regions = 0
    t_effects = t_encode = 0.0
    try:
        for frame in source:
            t0 = time.perf_counter()
            pixels = frame.pixels
            h, w = pixels.shape[:2]
            cover = at(frame.index)
            targets = [(track, expand_box(box, options.for_target(track.label).margin, w, h)) for track, box in cover]
            for track, region in targets:  # seeds from the original pixels, before any effect
                if track.id not in seeds and region[2] > region[0] and region[3] > region[1]:
                    seeds[track.id] = _track_seed(pixels, region)
            for track, region in targets:
                spec: EffectSpec = replace(specs[track.label], seed=seeds.get(track.id))
                apply_region_effect(pixels, region, spec)
            covered_frames += bool(targets)
            regions += len(targets)
            t1 = time.perf_counter()
            writer.write(pixels, frame.pts)
            t_effects += t1 - t0
            t_encode += time.perf_counter() - t1
            if progress is not None:
                progress("render", writer.frames, expected)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    if writer.frames != expected:
        raise DetectionError(f"pass 2 encoded {writer.frames} frames, {expected} expected: not published")
    return {
        "frames_covered": covered_frames,
        "regions": regions,
        "timings_ms": {"effects": round(t_effects * 1000, 1), "encode": round(t_encode * 1000, 1)},
    }


def anonymize_video(
    anonymizer: Anonymizer,
    src: str | Path,
    dst: str | Path,
    options: Options,
    settings: VideoSettings | None = None,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Anonymize ``src`` into ``dst`` (MP4); returns the JSON report. Fails closed."""
    settings = settings or VideoSettings()
    settings.validate()
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise InvalidOptionsError("the output would overwrite the original video")
    started = time.perf_counter()
    info = io.probe_video(src)
    io.check_supported(info, options.max_pixels)
    detected = detect_tracks(anonymizer, src, options, settings, total=info.frames, progress=progress)
    rendered = _render_atomically(src, dst, detected, options, settings, progress=progress)
    total_ms = elapsed_ms(started)
    return video_report(anonymizer, info, detected, rendered, options, settings, total_ms)


def video_report(
    anonymizer: Anonymizer,
    info: io.VideoInfo,
    detected: Detected,
    rendered: dict[str, Any],
    options: Options,
    settings: VideoSettings,
    total_ms: float,
) -> dict[str, Any]:
    """Tracks with first/last frame (and boxes if asked), counts, models, timings; no pixels."""
    try:
        models = {t: anonymizer.detector(t).card.version for t in options.targets}
    except DetectionError:
        models = {}
    timings = {**detected.timings, **rendered["timings_ms"], "total": total_ms}
    return {
        "anonymizer": __version__,
        "video": {**asdict(info), "frames": detected.frames},
        "audio": settings.audio if info.has_audio else "none",
        "counts": {t: sum(tr.label == t for tr in detected.tracks) for t in options.targets},
        "frames_looked": detected.looked,
        "frames_covered": rendered["frames_covered"],
        "regions": rendered["regions"],
        "tracks": [t.to_dict(boxes=settings.report_boxes) for t in detected.tracks],
        "thresholds": detected.thresholds,
        "settings": {
            "detect_every": settings.detect_every,
            "smooth": settings.smooth,
            "crf": settings.crf,
            **asdict(settings.tracks),
        },
        "models": models,
        "options": options.to_dict(),
        "timings_ms": timings,
        "fps": round(detected.frames / (total_ms / 1000), 2) if total_ms else None,
    }


def anonymize_segment(
    anonymizer: Anonymizer,
    src: str | Path,
    dst: str | Path,
    options: Options,
    segment: Segment,
    settings: VideoSettings | None = None,
    *,
    overlap: int = 18,
) -> dict[str, Any]:
    """One segment of a long video into its own part (see :mod:`.segments`). Detection also
    runs on ``overlap`` frames each side, so a track crossing a border is covered on both sides
    exactly as if the video had been done whole (``overlap`` >= max_gap + pad)."""
    settings = settings or VideoSettings()
    settings.validate()
    started = time.perf_counter()
    detected = detect_tracks(anonymizer, src, options, settings, segment=segment, overlap=overlap)
    rendered = _render_atomically(src, Path(dst), detected, options, settings, segment=segment)
    own = [
        t
        for t in detected.tracks
        if t.last + settings.tracks.pad >= segment.start and t.first - settings.tracks.pad < segment.stop
    ]
    return {
        "segment": segment.to_dict(),
        "frames": segment.stop - segment.start,
        "frames_looked": detected.looked,
        "frames_covered": rendered["frames_covered"],
        "regions": rendered["regions"],
        "tracks": [t.to_dict(boxes=settings.report_boxes) for t in own],
        "timings_ms": {**detected.timings, **rendered["timings_ms"], "total": elapsed_ms(started)},
    }


def _render_atomically(src: Path, dst: Path, detected, options, settings, **kwargs):
    """``render`` into a temporary file beside ``dst``, renamed only when complete: a half-written
    video is never left where an output is expected."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    try:
        rendered = render(src, tmp, detected, options, settings, **kwargs)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return rendered
