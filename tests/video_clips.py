"""Synthetic clips for the video tests: frames we choose, a sine tone, phone-like tags."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

PHONE_TAGS = {
    "location": "+48.8584+002.2945/",
    "com.apple.quicktime.location.ISO6709": "+48.8584+002.2945+035.000/",
    "com.apple.quicktime.make": "Apple",
    "com.apple.quicktime.model": "iPhone 15",
    "make": "Apple",
    "model": "iPhone 15",
    "creation_time": "2025-06-01T10:00:00.000000Z",
}


def write_clip(
    path: Path,
    frames: Iterable[np.ndarray],
    *,
    fps: int = 25,
    audio: bool = True,
    tags: dict[str, str] | None = None,
    fmt: str = "mov",
    codec: str = "libx264",
    gop: int = 25,
) -> Path:
    """Encode BGR frames (and a 440 Hz AAC tone as long as the frames) into ``path``."""
    import av

    out = av.open(str(path), mode="w", format=fmt, options={"movflags": "use_metadata_tags"} if fmt == "mov" else {})
    for key, value in (tags or {}).items():
        out.metadata[key] = value
    frames = list(frames)
    h, w = frames[0].shape[:2]
    video = out.add_stream(codec, rate=fps)
    video.width, video.height, video.pix_fmt = w, h, "yuv420p"
    video.codec_context.gop_size = gop
    if tags:
        video.metadata["handler_name"] = "Core Media Video"
    astream = None
    if audio:
        astream = out.add_stream("aac", rate=48000)
        astream.layout = "mono"
    for i, pixels in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="bgr24")
        frame.pts = i
        frame.time_base = Fraction(1, fps)
        for packet in video.encode(frame):
            out.mux(packet)
    for packet in video.encode(None):
        out.mux(packet)
    if astream is not None:
        total = int(48000 * len(frames) / fps)
        t = np.arange(total) / 48000
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        for start in range(0, total, 1024):
            chunk = av.AudioFrame.from_ndarray(tone[:, start : start + 1024].copy(), format="fltp", layout="mono")
            chunk.sample_rate = 48000
            chunk.pts = start
            for packet in astream.encode(chunk):
                out.mux(packet)
        for packet in astream.encode(None):
            out.mux(packet)
    out.close()
    return path


def stream_packets(path: Path, kind: str) -> list[bytes]:
    """The payload of every packet of the first stream of ``kind`` ("audio"/"video")."""
    import av

    with av.open(str(path)) as container:
        streams = getattr(container.streams, kind)
        if not streams:
            return []
        return [bytes(p) for p in container.demux(streams[0]) if p.size]


def count_frames(path: Path) -> tuple[int, float]:
    """Decode to the end: (frames, duration in seconds from the last frame's end)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        n, last = 0, 0
        for frame in container.decode(stream):
            n += 1
            last = frame.pts
        rate = float(stream.average_rate or stream.guessed_rate)
        return n, float(last * stream.time_base) + 1.0 / rate


def pan_zoom(
    image: np.ndarray,
    objects: list[tuple[str, tuple[float, float, float, float]]],
    *,
    frames: int,
    size: tuple[int, int],
    start: tuple[float, float, float],
    end: tuple[float, float, float],
    shake: Iterable[int] = (),
) -> tuple[list[np.ndarray], list[list[tuple[int, str, tuple[float, float, float, float]]]]]:
    """A virtual camera moving over a labelled photo: every frame's boxes are known exactly.

    ``start``/``end``: (centre x, centre y, window width) in photo pixels, interpolated
    linearly (a pan and a zoom); the window has the aspect of ``size``. Frames in ``shake``
    get a strong motion blur (a camera shake: where detectors blink). Labels per frame are
    ``(object id, label, box)`` for objects at least half inside the frame, clipped to it.
    """
    import cv2

    w, h = size
    out, labels = [], []
    shake = set(shake)
    for i in range(frames):
        t = i / max(1, frames - 1)
        cx, cy, ww = (a + (b - a) * t for a, b in zip(start, end, strict=True))
        s = w / ww
        m = np.float32([[s, 0, w / 2 - cx * s], [0, s, h / 2 - cy * s]])
        frame = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if i in shake:
            kernel = np.zeros((15, 15), np.float32)
            kernel[7, :] = 1 / 15
            frame = cv2.filter2D(frame, -1, kernel)
        out.append(frame)
        here = []
        for oid, (label, (x1, y1, x2, y2)) in enumerate(objects):
            bx1, by1 = x1 * s + m[0, 2], y1 * s + m[1, 2]
            bx2, by2 = x2 * s + m[0, 2], y2 * s + m[1, 2]
            cx1, cy1, cx2, cy2 = max(0, bx1), max(0, by1), min(w, bx2), min(h, by2)
            if cx2 <= cx1 or cy2 <= cy1 or (cx2 - cx1) * (cy2 - cy1) < 0.5 * (bx2 - bx1) * (by2 - by1):
                continue
            here.append((oid, label, (cx1, cy1, cx2, cy2)))
        labels.append(here)
    return out, labels


def coco_objects(
    folder: Path, file_name: str
) -> tuple[np.ndarray, list[tuple[str, tuple[float, float, float, float]]]]:
    """A labelled photo of a COCO set: BGR pixels and (label, x1 y1 x2 y2) per box."""
    import json

    import cv2

    data = json.loads((folder / "annotations.json").read_text())
    image = next(i for i in data["images"] if i["file_name"] == file_name)
    names = {1: "face", 2: "plate"}
    objects = [
        (
            names[a["category_id"]],
            (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]),
        )
        for a in data["annotations"]
        if a["image_id"] == image["id"]
    ]
    return cv2.imread(str(folder / file_name)), objects


def video_figures(detected, labels: list, settings, size: tuple[int, int], options) -> dict[str, dict]:
    """Per-frame recall and bare frames of a pass-1 result (``Detected``) against labelled frames,
    without smoothing and with it. Found = matched by a full-threshold detection on some frame of
    this run; covered regions = the boxes grown by each label's margin in ``options``, as rendered."""
    from dataclasses import replace

    from anonymizer.pipeline import expand_box
    from anonymizer.video.evaluation import clip_figures, found_objects
    from anonymizer.video.pipeline import covered_boxes

    found: dict[int, list] = {}
    for track in detected.tracks:  # what the image detector alone finds, frame by frame
        for f, box, score in zip(track.frames, track.boxes, track.scores, strict=True):
            if score >= detected.thresholds[track.label]:
                found.setdefault(f, []).append((track.label, box))
    ids = found_objects(labels, found)
    out = {}
    for smooth in (False, True):
        at = covered_boxes(detected.tracks, replace(settings, smooth=smooth), detected.frames)
        covered = [
            [(t.label, b, expand_box(b, options.for_target(t.label).margin, *size)) for t, b in at(f)]
            for f in range(detected.frames)
        ]
        out["smoothed" if smooth else "per-frame"] = clip_figures(labels, covered, ids).to_dict()
    return out
