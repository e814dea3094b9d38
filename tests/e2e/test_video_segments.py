"""Long videos in parts: segments start at keyframes, run on their own with context frames,
and join by stream copy into the whole video, with no face bare at a border."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from video_clips import PHONE_TAGS, coco_objects, count_frames, pan_zoom, stream_packets, write_clip

from anonymizer.options import Options
from anonymizer.pipeline import Anonymizer
from anonymizer.video import io
from anonymizer.video.pipeline import anonymize_segment
from anonymizer.video.segments import JoinError, join_parts, plan_segments, scan

pytest.importorskip("av")


@pytest.fixture(scope="module")
def clip(shared_data: Path, tmp_path_factory) -> tuple[Path, list]:
    image, objects = coco_objects(shared_data / "faces" / "street-masks-dev", "images/maksssksksss787.jpg")
    h, w = image.shape[:2]
    frames, labels = pan_zoom(
        image, objects, frames=60, size=(480, 320), start=(w * 0.35, h / 2, w * 0.7), end=(w * 0.6, h / 2, w * 0.45)
    )
    return write_clip(tmp_path_factory.mktemp("seg") / "long.mov", frames, tags=PHONE_TAGS, gop=12), labels


@pytest.fixture(scope="module")
def parts(clip, tmp_path_factory) -> tuple[list[Path], list[dict]]:
    src, _ = clip
    plan = plan_segments(src, fps=25, seconds=0.8)
    folder = tmp_path_factory.mktemp("parts")
    anonymizer = Anonymizer()
    reports = [
        anonymize_segment(anonymizer, src, folder / f"{s.index}.mp4", Options(targets=("face",)), s, overlap=18)
        for s in plan.segments
    ]
    return [folder / f"{s.index}.mp4" for s in plan.segments], reports


def test_plan_cuts_at_keyframes_and_covers_every_frame(clip) -> None:
    src, _ = clip
    _, keys = scan(src)
    assert keys == [0, 12, 24, 36, 48]
    plan = plan_segments(src, fps=25, seconds=0.8)
    starts = [s.start for s in plan.segments]
    assert starts == [0, 24, 48] and plan.segments[-1].stop == plan.frames == 60
    assert all(s.seek_index in keys and s.seek_index <= max(0, s.start - 18) for s in plan.segments)
    assert len(plan_segments(src, fps=25, seconds=60).segments) == 1  # short videos run whole


def test_joined_parts_are_the_whole_video(clip, parts, tmp_path: Path) -> None:
    src, labels = clip
    files, reports = parts
    assert [r["frames"] for r in reports] == [24, 24, 12]
    assert [count_frames(f)[0] for f in files] == [24, 24, 12]
    out = tmp_path / "joined.mp4"
    assert join_parts(src, files, out) == 60
    assert count_frames(out) == count_frames(src) == (60, pytest.approx(60 / 25))
    assert stream_packets(out, "audio") == stream_packets(src, "audio")
    assert not any(w in " ".join(io.container_tags(out)).lower() for w in ("location", "make", "model", "creation"))
    for a, b, here in zip(io.read_frames(src), io.read_frames(out), labels, strict=True):
        for _, _, (x1, y1, x2, y2) in here:
            x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
            diff = np.abs(a.pixels[y1:y2, x1:x2].astype(np.int16) - b.pixels[y1:y2, x1:x2]).mean()
            assert diff > 3, f"frame {a.index} (segment border at 24 and 48): a face left bare"


def test_tracks_cross_the_borders(parts) -> None:
    _, reports = parts
    spans = [(t["first_frame"], t["last_frame"]) for t in reports[1]["tracks"]]
    assert any(first < 24 for first, _ in spans)  # seen in the context before its own frames
    assert any(last >= 48 for _, last in spans)  # ... and after


def test_join_fails_closed(clip, parts, tmp_path: Path) -> None:
    src, _ = clip
    files, _ = parts
    out = tmp_path / "joined.mp4"
    with pytest.raises(JoinError, match="follow"):
        join_parts(src, [files[1], files[0], files[2]], out)
    with pytest.raises(JoinError):
        join_parts(src, [], out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
