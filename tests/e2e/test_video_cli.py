"""``anonymize clip.mp4 -o out/``: a video beside images, progress in frames with an ETA, fail closed."""

from __future__ import annotations

import io as stdio
import json
from pathlib import Path

import numpy as np
import pytest
from video_clips import count_frames, stream_packets, write_clip

from anonymizer_local.cli import main
from anonymizer_local.video import FrameProgress, is_video_file

pytest.importorskip("av")


@pytest.fixture(scope="module")
def clip(astronaut_bgr: np.ndarray, tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    base = astronaut_bgr[:256, 128:384]
    frames = [np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8) for _ in range(12)]
    return write_clip(tmp_path_factory.mktemp("cli") / "still.mov", frames)


def test_a_video_and_an_image_in_one_run(clip: Path, astronaut_jpeg: bytes, tmp_path: Path, capsys) -> None:
    photo = tmp_path / "in" / "photo.jpg"
    photo.parent.mkdir()
    photo.write_bytes(astronaut_jpeg)
    out = tmp_path / "out"
    code = main([str(clip), str(photo), "-o", str(out), "--report", "--progress", "--targets", "face"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (out / "photo.jpg").exists() and (out / "still.mp4").exists()
    assert count_frames(out / "still.mp4") == count_frames(clip)
    assert stream_packets(out / "still.mp4", "audio") == stream_packets(clip, "audio")
    report = json.loads((out / "still.mp4.report.json").read_text())
    assert report["counts"]["face"] == 1 and report["source"] == "still.mov"
    assert "render 12/12 frames" in err and "anonymized 2 of 2" in err


def test_audio_drop_and_detect_every(clip: Path, tmp_path: Path) -> None:
    code = main([str(clip), "-o", str(tmp_path), "--audio", "drop", "--detect-every", "3", "--targets", "face"])
    assert code == 0
    assert stream_packets(tmp_path / "still.mp4", "audio") == [] and count_frames(tmp_path / "still.mp4")[0] == 12


def test_a_broken_video_fails_and_writes_nothing(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(400))
    out = tmp_path / "out"
    assert main([str(bad), "-o", str(out)]) == 1
    assert "bad.mp4" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_videos_are_told_by_suffix_or_bytes(clip: Path, tmp_path: Path) -> None:
    nameless = tmp_path / "upload.bin"
    nameless.write_bytes(clip.read_bytes())
    assert is_video_file(clip) and is_video_file(nameless)
    jpeg = tmp_path / "x.bin"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    assert not is_video_file(jpeg)


def test_progress_shows_frames_and_an_eta() -> None:
    stream = stdio.StringIO()
    bar = FrameProgress("clip.mp4", stream)
    bar.started -= 2.0  # two seconds in: 10 frames done of 100 at 5 fps
    bar("detect", 10, 100)
    line = stream.getvalue()
    assert "detect 10/100 frames" in line and "5.0 fps" in line
    assert "ETA 0:38" in line  # 90 frames left to detect + 100 to render, at 5 fps


def test_local_run_walks_the_state_machine_for_a_video(clip: Path, tmp_path: Path, capsys) -> None:
    assert main(["local-run", str(clip), "-o", str(tmp_path), "--set", "targets=face"]) == 0
    err = capsys.readouterr().err
    assert "states: Plan -> Segments -> Segment -> Join -> Done" in err
    assert count_frames(tmp_path / "still.mov") == count_frames(clip)
    report = json.loads((tmp_path / "still.mov.report.json").read_text())
    assert report["status"] == "ok" and report["counts"] == {"face": 1} and report["parts"] == 1
