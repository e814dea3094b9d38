"""A real clip (CC BY 4.0, tests/assets/video/README.md): one person, face visible in every
frame. Matroska in, MP4 out; with the detector on every 3rd frame, smoothing covers every frame."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from video_clips import count_frames

from anonymizer.options import Options
from anonymizer.pipeline import Anonymizer
from anonymizer.video import io
from anonymizer.video.pipeline import VideoSettings, anonymize_video, covered_boxes, detect_tracks

pytest.importorskip("av")
CLIP = Path(__file__).resolve().parents[1] / "assets" / "video" / "asl-hungry.mkv"


def test_every_frame_of_the_real_clip_is_covered_with_sparse_detection() -> None:
    settings = VideoSettings(detect_every=3)
    detected = detect_tracks(Anonymizer(), CLIP, Options(targets=("face",)), settings)
    faces = [t for t in detected.tracks if t.label == "face"]
    found = {f for t in faces for f, s in zip(t.frames, t.scores, strict=True) if s >= detected.thresholds["face"]}
    figures = {}
    for smooth in (False, True):
        at = covered_boxes(detected.tracks, replace(settings, smooth=smooth), detected.frames)
        covered = sum(any(t.label == "face" for t, _ in at(f)) for f in range(detected.frames))
        figures["smoothed" if smooth else "per-frame"] = {"covered": covered, "bare": detected.frames - covered}
    print("\nreal clip asl-hungry, detect every 3:", json.dumps({"frames": detected.frames, **figures}))
    assert detected.frames == 49 and len(found) >= 15  # of the 17 frames it looked at (0, 3, ..., 48)
    assert figures["per-frame"]["bare"] >= 32  # at least every frame it did not look at
    assert figures["smoothed"]["bare"] == 0


def test_matroska_in_mp4_out_same_frames_face_changed(tmp_path: Path) -> None:
    out = tmp_path / "asl.mp4"
    settings = VideoSettings(detect_every=3, report_boxes=True)
    report = anonymize_video(Anonymizer(), CLIP, out, Options(targets=("face",)), settings)
    assert report["audio"] == "none" and report["frames_covered"] == 49
    (frames_out, seconds_out), (frames_in, seconds_in) = count_frames(out), count_frames(CLIP)
    assert frames_out == frames_in == 49 and seconds_out == pytest.approx(seconds_in, abs=0.002)
    (track,) = [t for t in report["tracks"] if t["label"] == "face" and t["detections"] >= 15]
    frames = {f.index: f.pixels for f in io.read_frames(CLIP) if f.index % 3 == 0}
    for f, x1, y1, x2, y2 in track["boxes"]:  # where the detector looked: the face was changed
        a, b = frames[f], next(o.pixels for o in io.read_frames(out, start=f, stop=f + 1))
        diff = np.abs(a[y1:y2, x1:x2].astype(np.int16) - b[y1:y2, x1:x2]).mean()
        assert diff > 3, f"frame {f}: the face left as it was"
