"""Detections over time: link them into tracks (IoU + constant-velocity motion), then smooth
in both directions.

Why both directions: a detector blinks (motion blur, a turned head, a plate at a grazing
angle) and first sees an object some frames after it entered. A track is therefore kept from
its *weakest* linked detection (the detector runs at a lower "track" threshold), confirmed
only if at least one detection reaches the full threshold, its gaps are filled by linear
interpolation, and it is extended ``pad`` frames before its first and after its last
detection (the look-behind / look-ahead buffer), extrapolated with its own velocity.

Everything here works on boxes only (a few numbers per frame), never on pixels.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TrackSettings:
    """How detections become tracks. Frames are counted at the video's frame rate."""

    match_iou: float = 0.2  # least IoU between a track's predicted box and a detection
    max_jump: float = 0.8  # ... or a centre this many box sizes away per frame (same size)
    max_gap: int = 12  # frames a track may go undetected and still be linked (and filled)
    pad: int = 6  # frames covered before the first and after the last detection
    low_factor: float = 0.5  # track threshold = operating threshold x this
    pad_grow: float = 0.02  # padded boxes grow by this fraction per side per frame away
    size_window: int = 2  # a box is as large as the largest of this many detections either side


@dataclass
class Track:
    """One object: its detections, frame by frame (frames strictly increasing)."""

    id: int
    label: str
    frames: list[int] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    def velocity(self) -> Box:
        """Per-frame change of the box over its last two detections (zero for one)."""
        if len(self.frames) < 2:
            return (0.0, 0.0, 0.0, 0.0)
        dt = self.frames[-1] - self.frames[-2]
        a, b = self.boxes[-2], self.boxes[-1]
        return tuple((q - p) / dt for p, q in zip(a, b, strict=True))  # type: ignore[return-value]

    def predict(self, frame: int) -> Box:
        """The last box, its centre moved with the track's velocity (its size kept: a size change
        extrapolated over a few frames collapses or explodes a box)."""
        v = self.velocity()
        dt = frame - self.last
        dx, dy = (v[0] + v[2]) / 2 * dt, (v[1] + v[3]) / 2 * dt
        x1, y1, x2, y2 = self.boxes[-1]
        return (x1 + dx, y1 + dy, x2 + dx, y2 + dy)

    def to_dict(self, *, boxes: bool = False) -> dict:
        out = {
            "id": self.id,
            "label": self.label,
            "first_frame": self.first,
            "last_frame": self.last,
            "detections": len(self.frames),
            "max_score": round(max(self.scores), 4),
        }
        if boxes:  # compact: [frame, x1, y1, x2, y2] per detection, integer pixels
            out["boxes"] = [[f, *(round(v) for v in b)] for f, b in zip(self.frames, self.boxes, strict=True)]
        return out


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Tracker:
    """Greedy online linking, frame by frame; finished tracks are handed out as they end."""

    def __init__(self, settings: TrackSettings | None = None, *, first_id: int = 0):
        self.settings = settings or TrackSettings()
        self._active: list[Track] = []
        self._next_id = first_id

    def update(self, frame: int, detections: Iterable[tuple[str, float, Box]]) -> list[Track]:
        """Link this frame's ``(label, score, box)`` detections; returns the tracks that ended
        (undetected for more than ``max_gap`` frames), so a caller can let go of them."""
        dets = list(detections)
        ended = [t for t in self._active if frame - t.last > self.settings.max_gap]
        self._active = self._alive(frame)
        used_d = set()
        for ti, di in self._pairs(self._active, frame, dets):
            used_d.add(di)
            label, score, box = dets[di]
            track = self._active[ti]
            track.frames.append(frame)
            track.boxes.append(tuple(float(v) for v in box))
            track.scores.append(float(score))
        for di, (label, score, box) in enumerate(dets):
            if di not in used_d:
                track = Track(self._next_id, label, [frame], [tuple(float(v) for v in box)], [float(score)])
                self._next_id += 1
                self._active.append(track)
        return ended

    def steady(
        self, frame: int, detections: Iterable[tuple[str, float, Box]], since: int, thresholds: dict[str, float]
    ) -> bool:
        """Whether ``detections`` at ``frame`` continue the objects seen from frame ``since`` on (the
        last look, with the frames looked at just before it): every detection at the full
        threshold links to a track, and every track seen since then that reached the full
        threshold links to a detection. Only then may the frames between go unlooked:
        an object that appears or is lost between two looks is followed on every frame. Weak
        detections (between the track and the full threshold) come and go without a dense look:
        they only extend tracks."""
        dets = list(detections)
        tracks = self._alive(frame)
        pairs = self._pairs(tracks, frame, dets)
        linked_t, linked_d = {ti for ti, _ in pairs}, {di for _, di in pairs}
        new = any(di not in linked_d and score >= thresholds[label] for di, (label, score, _) in enumerate(dets))
        lost = any(
            ti not in linked_t and t.last >= since and max(t.scores) >= thresholds[t.label]
            for ti, t in enumerate(tracks)
        )
        return not (new or lost)

    def _alive(self, frame: int) -> list[Track]:
        """The active tracks still linkable at ``frame`` (undetected for at most ``max_gap`` frames)."""
        return [t for t in self._active if frame - t.last <= self.settings.max_gap]

    def _pairs(self, tracks: list[Track], frame: int, dets: list[tuple[str, float, Box]]) -> list[tuple[int, int]]:
        """Greedy one-to-one links (track index, detection index), best overlap first."""
        candidates = []
        for ti, track in enumerate(tracks):
            predicted = track.predict(frame)
            for di, (label, _, box) in enumerate(dets):
                if label == track.label:
                    overlap = iou(predicted, box)
                    if overlap >= self.settings.match_iou or self._near(predicted, box, frame - track.last):
                        candidates.append((overlap, ti, di))
        candidates.sort(reverse=True)
        used_t, used_d, pairs = set(), set(), []
        for _, ti, di in candidates:
            if ti not in used_t and di not in used_d:
                used_t.add(ti)
                used_d.add(di)
                pairs.append((ti, di))
        return pairs

    def _near(self, a: Box, b: Box, frames: int) -> bool:
        """A fast object whose boxes no longer overlap (before its velocity is known): a centre
        within ``max_jump`` box sizes per frame and a similar size."""
        sa, sb = max(a[2] - a[0], a[3] - a[1]), max(b[2] - b[0], b[3] - b[1])
        if min(sa, sb) <= 0 or max(sa, sb) > 1.5 * min(sa, sb):
            return False
        dx = (a[0] + a[2] - b[0] - b[2]) / 2
        dy = (a[1] + a[3] - b[1] - b[3]) / 2
        return (dx * dx + dy * dy) ** 0.5 <= self.settings.max_jump * max(sa, sb) * max(1, frames)

    def finish(self) -> list[Track]:
        ended, self._active = self._active, []
        return ended


def confirmed(tracks: Iterable[Track], thresholds: dict[str, float]) -> list[Track]:
    """Tracks with at least one detection at the full threshold of their label."""
    return [t for t in tracks if max(t.scores) >= thresholds[t.label]]


def _lerp(a: Box, b: Box, t: float) -> Box:
    return tuple(p + (q - p) * t for p, q in zip(a, b, strict=True))  # type: ignore[return-value]


def _padded(box: Box, velocity: Box, steps: int, grow: float) -> Box:
    """``box`` moved ``steps`` frames along ``velocity`` (negative: backwards), grown with distance.

    Only the centre follows the motion; the size never shrinks below the detected box (a face
    leaving the frame is detected ever smaller: extrapolating that would uncover it).
    """
    moved = [b + v * steps for b, v in zip(box, velocity, strict=True)]
    cx, cy = (moved[0] + moved[2]) / 2, (moved[1] + moved[3]) / 2
    w = max(box[2] - box[0], moved[2] - moved[0]) * (1 + 2 * grow * abs(steps))
    h = max(box[3] - box[1], moved[3] - moved[1]) * (1 + 2 * grow * abs(steps))
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def track_boxes(track: Track, settings: TrackSettings, start: int, stop: int) -> dict[int, Box]:
    """The box to cover on every frame of ``[start, stop)`` where ``track`` is present:
    detections (each as large as the largest of its ``size_window`` neighbours on either side),
    gaps interpolated, ``pad`` frames extrapolated at both ends."""
    out: dict[int, Box] = {}
    frames, boxes = track.frames, _steady_sizes(track.boxes, settings.size_window)
    lo, hi = max(start, track.first - settings.pad), min(stop, track.last + settings.pad + 1)
    if lo >= hi:
        return out
    head_v = _velocity_at(track, 0)
    tail_v = _velocity_at(track, len(frames) - 1)
    for f in range(lo, hi):
        if f < track.first:
            out[f] = _padded(boxes[0], head_v, f - track.first, settings.pad_grow)
        elif f > track.last:
            out[f] = _padded(boxes[-1], tail_v, f - track.last, settings.pad_grow)
        else:
            j = bisect_right(frames, f) - 1  # frames[j] <= f
            if frames[j] == f:
                out[f] = boxes[j]
            else:  # frames[j] < f < frames[j + 1]: a blink, filled
                a, b = frames[j], frames[j + 1]
                out[f] = _lerp(boxes[j], boxes[j + 1], (f - a) / (b - a))
    return out


def _steady_sizes(boxes: list[Box], window: int) -> list[Box]:
    """Each box, centre kept, as wide and as tall as the largest within ``window`` detections on
    either side: a blurred or half-visible frame often gets a box too small for the object, and
    a box that swells and shrinks from frame to frame flickers."""
    if window <= 0:
        return boxes
    out = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        near = boxes[max(0, i - window) : i + window + 1]
        w = max(b[2] - b[0] for b in near)
        h = max(b[3] - b[1] for b in near)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        out.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return out


def _velocity_at(track: Track, i: int) -> Box:
    """Per-frame box change at the head (i=0) or the tail (last) of a track."""
    if len(track.frames) < 2:
        return (0.0, 0.0, 0.0, 0.0)
    a, b = (0, 1) if i == 0 else (len(track.frames) - 2, len(track.frames) - 1)
    dt = track.frames[b] - track.frames[a]
    return tuple((q - p) / dt for p, q in zip(track.boxes[a], track.boxes[b], strict=True))  # type: ignore[return-value]


def frame_boxes(
    tracks: Sequence[Track], settings: TrackSettings, start: int, stop: int
) -> dict[int, list[tuple[Track, Box]]]:
    """Per frame of ``[start, stop)``: every (track, box) to cover, smoothed both ways."""
    out: dict[int, list[tuple[Track, Box]]] = {}
    for track in tracks:
        for f, box in track_boxes(track, settings, start, stop).items():
            out.setdefault(f, []).append((track, box))
    return out
