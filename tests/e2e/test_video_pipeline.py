"""Video end to end on synthetic clips over labelled photos of ../shared/data (every frame's
boxes are known): the output plays, keeps frames/duration/audio, carries no tags; per-frame
recall with and without smoothing and the number of bare frames."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from video_clips import PHONE_TAGS, coco_objects, count_frames, pan_zoom, stream_packets, video_figures, write_clip

from anonymizer.options import Options
from anonymizer.pipeline import Anonymizer
from anonymizer.video import DETECT_EVERY, io
from anonymizer.video.pipeline import (
    Detected,
    VideoSettings,
    anonymize_video,
    detect_tracks,
    render,
    video_report,
)

pytest.importorskip("av")

FACES_PHOTO = "images/maksssksksss787.jpg"  # 8 labelled faces, 37-63 px
SIZE = (480, 320)
SHAKE = (14, 15, 30)  # motion-blurred frames: where a per-frame detector blinks


@pytest.fixture(scope="module")
def anonymizer() -> Anonymizer:
    return Anonymizer()


@pytest.fixture(scope="module")
def faces_clip(shared_data: Path, tmp_path_factory) -> tuple[Path, list]:
    image, objects = coco_objects(shared_data / "faces" / "street-masks-dev", FACES_PHOTO)
    h, w = image.shape[:2]
    frames, labels = pan_zoom(
        image,
        objects,
        frames=48,
        size=SIZE,
        start=(w * 0.35, h / 2, w * 0.7),
        end=(w * 0.6, h / 2, w * 0.45),
        shake=SHAKE,
    )
    path = write_clip(tmp_path_factory.mktemp("video") / "pan.mov", frames, tags=PHONE_TAGS)
    return path, labels


FACES = Options(targets=("face",))


@pytest.fixture(scope="module")
def detected(faces_clip, anonymizer: Anonymizer) -> Detected:
    """Pass 1 once for the output checks and the figures (detector on every frame)."""
    return detect_tracks(anonymizer, faces_clip[0], FACES, VideoSettings(detect_every=1))


@pytest.fixture(scope="module")
def anonymized(faces_clip, anonymizer: Anonymizer, detected: Detected, tmp_path_factory) -> tuple[Path, dict]:
    """Pass 2 and the report, as anonymize_video runs them (anonymize_video itself: the tests below)."""
    src, _ = faces_clip
    out = tmp_path_factory.mktemp("out") / "pan.mp4"
    settings = VideoSettings(report_boxes=True)
    rendered = render(src, out, detected, FACES, settings)
    return out, video_report(anonymizer, io.probe_video(src), detected, rendered, FACES, settings, 1.0)


def test_output_plays_to_the_end_with_same_frames_duration_and_audio(faces_clip, anonymized) -> None:
    src, _ = faces_clip
    out, report = anonymized
    assert count_frames(out) == count_frames(src) == (48, pytest.approx(48 / 25))
    assert report["video"]["frames"] == 48
    audio = stream_packets(src, "audio")
    assert audio and stream_packets(out, "audio") == audio


def test_output_carries_no_gps_make_model_or_creation_time(anonymized) -> None:
    out, _ = anonymized
    keys = " ".join(io.container_tags(out)).lower()
    assert not any(word in keys for word in ("location", "make", "model", "creation_time"))
    raw = out.read_bytes()
    assert not any(needle in raw for needle in (b"48.8584", b"iPhone", b"Apple", b"2025-06-01"))


def test_report_lists_tracks_and_is_json(anonymized) -> None:
    _, report = anonymized
    json.dumps(report)
    assert report["counts"]["face"] == len(report["tracks"]) >= 6
    assert report["audio"] == "keep" and report["frames_covered"] == 48
    track = report["tracks"][0]
    assert track["first_frame"] <= track["last_frame"] and track["boxes"][0][0] == track["first_frame"]
    assert {"detect", "effects", "encode", "total"} <= set(report["timings_ms"])


def test_faces_are_changed_in_the_output(faces_clip, anonymized) -> None:
    src, labels = faces_clip
    out, _ = anonymized
    for a, b, here in zip(io.read_frames(src), io.read_frames(out), labels, strict=True):
        for _, _, (x1, y1, x2, y2) in here:
            x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
            crop_a = a.pixels[y1:y2, x1:x2].astype(np.int16)
            crop_b = b.pixels[y1:y2, x1:x2].astype(np.int16)
            assert np.abs(crop_a - crop_b).mean() > 3, f"frame {a.index}: a face left as it was"


@pytest.mark.parametrize("every", [1, 4])
def test_smoothing_leaves_no_found_face_bare(anonymizer, faces_clip, detected, every: int) -> None:
    """Detected only on frames (every k-th, at the full threshold): blinks leave faces bare.
    Tracks smoothed both ways, and with sparse detection the frames between two looks that do
    not see the same faces looked at too: 0 bare frames for every face found at least once."""
    settings = VideoSettings(detect_every=every)
    if every != 1:
        detected = detect_tracks(anonymizer, faces_clip[0], FACES, settings)
        assert detected.looked < detected.frames  # sparse: frames were skipped
    figures = video_figures(detected, faces_clip[1], settings, SIZE, FACES)
    print(f"\nfaces pan/zoom clip, detect every {every} ({detected.looked} frames looked at):", json.dumps(figures))
    per_frame, smoothed = figures["per-frame"], figures["smoothed"]
    assert smoothed["found_objects"] >= 6
    assert per_frame["bare_found"] > 0  # the shaken frames do make the detector blink
    assert smoothed["recall"] > per_frame["recall"] and smoothed["recall"] >= 0.9
    assert smoothed["bare_found"] == 0  # the goal


PLATES_PHOTO = "images/dayride_type1_003_t45.jpg"  # validation split: 3 plates, 66-125 px wide
PLATES = Options(targets=("plate",))


@pytest.fixture(scope="module")
def plates_clip(shared_data: Path, tmp_path_factory) -> tuple[Path, list]:
    """A pan to the right over a dashcam frame (a plate leaves at the left edge), zooming in."""
    image, objects = coco_objects(shared_data / "plates" / "romania-dashcam", PLATES_PHOTO)
    frames, labels = pan_zoom(
        image, objects, frames=48, size=(640, 360), start=(500, 420, 900), end=(850, 420, 700), shake=SHAKE
    )
    return write_clip(tmp_path_factory.mktemp("video") / "plates.mp4", frames), labels


@pytest.mark.parametrize("every", [1, DETECT_EVERY])
def test_smoothing_leaves_no_found_plate_bare(anonymizer, plates_clip, every: int) -> None:
    """The same goal for plates (plate verifier on, as shipped): 0 bare frames for every plate
    found at least once, with the detector on every frame and at the default."""
    settings = VideoSettings(detect_every=every)
    detected = detect_tracks(anonymizer, plates_clip[0], PLATES, settings)
    figures = video_figures(detected, plates_clip[1], settings, (640, 360), PLATES)
    print(f"\nplates pan/zoom clip, detect every {every} ({detected.looked} frames looked at):", json.dumps(figures))
    smoothed = figures["smoothed"]
    assert smoothed["found_objects"] >= 2
    assert smoothed["recall"] >= figures["per-frame"]["recall"] and smoothed["recall"] >= 0.9
    assert smoothed["bare_found"] == 0


def test_deform_is_stable_over_time(anonymizer, astronaut_bgr: np.ndarray, tmp_path: Path) -> None:
    """Sensor noise changes every frame; the warp of a track must not (no shimmer)."""
    rng = np.random.default_rng(1)
    base = astronaut_bgr[:256, 128:384]
    frames = [np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8) for _ in range(10)]
    src = write_clip(tmp_path / "still.mp4", frames, fmt="mp4", audio=False)
    options = Options(targets=("face",), face=replace(Options().face, effect="deform"))
    out = tmp_path / "o.mp4"
    report = anonymize_video(anonymizer, src, out, options, VideoSettings(report_boxes=True))
    assert report["counts"]["face"] == 1
    _, x1, y1, x2, y2 = report["tracks"][0]["boxes"][0]
    outs = [f.pixels[y1:y2, x1:x2].astype(np.int16) for f in io.read_frames(out)]
    ins = [f.pixels[y1:y2, x1:x2].astype(np.int16) for f in io.read_frames(src)]
    changed = np.mean([np.abs(a - b).mean() for a, b in zip(ins, outs, strict=True)])
    shimmer = np.mean([np.abs(a - b).mean() for a, b in zip(outs, outs[1:], strict=False)])
    assert changed > 10 and shimmer < 3, (changed, shimmer)


def test_the_original_is_never_overwritten(anonymizer, faces_clip) -> None:
    src, _ = faces_clip
    before = src.read_bytes()
    with pytest.raises(Exception, match="overwrite"):
        anonymize_video(anonymizer, src, src, Options(targets=("face",)))
    assert src.read_bytes() == before


def test_failure_publishes_nothing(anonymizer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(500))
    with pytest.raises(io.InvalidVideoError):
        anonymize_video(anonymizer, bad, tmp_path / "out.mp4", Options())
    assert list(tmp_path.iterdir()) == [bad]
