"""Video decode/encode: frames, timing, audio copied bit for bit or dropped, no container tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from video_clips import PHONE_TAGS, count_frames, stream_packets, write_clip

from anonymizer.errors import ImageTooLargeError
from anonymizer.video import io

av = pytest.importorskip("av")


def _frames(n: int = 40, w: int = 320, h: int = 240) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, 4 * i, axis=1) for i in range(n)]


@pytest.fixture(scope="module")
def phone_clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "phone.mov", _frames(), tags=PHONE_TAGS)


def _copy(src: Path, dst: Path, audio: str = "keep") -> Path:
    info = io.probe_video(src)
    writer = io.VideoWriter(
        dst,
        width=info.width,
        height=info.height,
        time_base=io.stream_time_base(src),
        fps=info.fps,
        audio_source=src,
        audio=audio,
    )
    for frame in io.read_frames(src):
        writer.write(frame.pixels, frame.pts)
    writer.close()
    return dst


def test_probe_reads_the_header_and_first_frame(phone_clip: Path) -> None:
    info = io.probe_video(phone_clip)
    assert (info.width, info.height, info.frames, info.fps) == (320, 240, 40, 25.0)
    assert info.duration == pytest.approx(1.6)
    assert info.has_audio and info.audio_codec == "aac" and info.rotation == 0


def test_the_clip_carries_phone_tags(phone_clip: Path) -> None:
    """The fixture itself must carry what we strip, or the next test proves nothing."""
    values = set(io.container_tags(phone_clip).values())
    assert {"+48.8584+002.2945/", "iPhone 15", "2025-06-01T10:00:00.000000Z"} <= values


def test_output_plays_with_same_frames_duration_and_identical_audio(phone_clip: Path, tmp_path: Path) -> None:
    out = _copy(phone_clip, tmp_path / "out.mp4")
    assert count_frames(out) == count_frames(phone_clip) == (40, pytest.approx(1.6))
    audio_in = stream_packets(phone_clip, "audio")
    assert audio_in and stream_packets(out, "audio") == audio_in
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert [s.type for s in container.streams] == ["video", "audio"]


def test_output_has_no_location_make_model_or_creation_time(phone_clip: Path, tmp_path: Path) -> None:
    out = _copy(phone_clip, tmp_path / "out.mp4")
    tags = io.container_tags(out)
    keys = " ".join(tags).lower()
    for word in ("location", "xyz", "make", "model", "creation_time"):
        assert word not in keys
    raw = out.read_bytes()
    for needle in (b"48.8584", b"iPhone", b"Apple", b"Core Media", b"2025-06-01"):
        assert needle not in raw


def test_faststart_puts_the_index_first(phone_clip: Path, tmp_path: Path) -> None:
    raw = _copy(phone_clip, tmp_path / "out.mp4").read_bytes()
    assert 0 < raw.index(b"moov") < raw.index(b"mdat")


def test_audio_drop_gives_video_only(phone_clip: Path, tmp_path: Path) -> None:
    out = _copy(phone_clip, tmp_path / "out.mp4", audio="drop")
    assert stream_packets(out, "audio") == []
    assert count_frames(out)[0] == 40


def test_odd_sizes_are_encoded(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "odd.mkv", _frames(10, 64, 48), audio=False, fmt="matroska")
    frames = list(io.read_frames(clip))
    writer = io.VideoWriter(tmp_path / "o.mp4", width=63, height=47, time_base=io.stream_time_base(clip), fps=25)
    for f in frames:
        writer.write(np.ascontiguousarray(f.pixels[:47, :63]), f.pts)
    writer.close()
    assert count_frames(tmp_path / "o.mp4")[0] == 10


def test_not_a_video_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 100)
    with pytest.raises(io.InvalidVideoError):
        io.probe_video(bad)


def test_sniff_video_is_the_image_paths_own(phone_clip: Path) -> None:
    """One sniffer for both paths: what the image path refuses as video, this path takes."""
    assert io.sniff_video(phone_clip.read_bytes()[:256]) == "mov"
    assert io.sniff_video(b"\xff\xd8\xff\xe0" + b"\x00" * 12) is None


def test_frames_over_the_pixel_budget_are_refused(phone_clip: Path) -> None:
    info = io.probe_video(phone_clip)
    io.check_supported(info, 320 * 240)
    with pytest.raises(ImageTooLargeError):
        io.check_supported(info, 320 * 240 - 1)


def test_a_truncated_video_is_refused(phone_clip: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mov"
    cut.write_bytes(phone_clip.read_bytes()[:2000])
    with pytest.raises(io.InvalidVideoError):
        list(io.read_frames(cut)) if io.probe_video(cut) else None
