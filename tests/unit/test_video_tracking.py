"""Tracks over time: linking by IoU and motion, gaps filled, both ends padded, weak tracks dropped."""

from __future__ import annotations

import pytest

from anonymizer.video.tracking import Tracker, TrackSettings, confirmed, iou, track_boxes


def _box(x: float, y: float = 100.0, s: float = 40.0) -> tuple[float, float, float, float]:
    return (x, y, x + s, y + s)


def test_iou() -> None:
    assert iou(_box(0), _box(0)) == 1.0
    assert iou(_box(0), _box(100)) == 0.0
    assert iou(_box(0), _box(20)) == pytest.approx(800 / 2400)


def test_fast_object_is_linked_by_its_motion() -> None:
    """30 px per frame on a 40 px box: IoU with the last box is 0.14, with the prediction ~1."""
    tracker = Tracker(TrackSettings(match_iou=0.3))
    for f in range(6):
        tracker.update(f, [("face", 0.9, _box(30.0 * f))])
    tracks = tracker.finish()
    assert len(tracks) == 1 and tracks[0].frames == list(range(6))


def test_labels_never_share_a_track() -> None:
    tracker = Tracker()
    for f in range(3):
        tracker.update(f, [("face", 0.9, _box(10)), ("plate", 0.9, _box(10))])
    assert sorted(t.label for t in tracker.finish()) == ["face", "plate"]


def test_a_blink_is_filled_by_interpolation() -> None:
    settings = TrackSettings(max_gap=5, pad=0)
    tracker = Tracker(settings)
    for f in (0, 1, 2, 6, 7):  # the detector blinks on frames 3-5
        tracker.update(f, [("face", 0.9, _box(10.0 * f))])
    (track,) = tracker.finish()
    boxes = track_boxes(track, settings, 0, 10)
    assert sorted(boxes) == list(range(8))
    assert boxes[4] == pytest.approx(_box(40.0))


def test_a_gap_longer_than_max_gap_starts_a_new_track() -> None:
    tracker = Tracker(TrackSettings(max_gap=2))
    ended = []
    for f in (0, 1, 5, 6):
        ended += tracker.update(f, [("face", 0.9, _box(10))])
    assert len(ended + tracker.finish()) == 2


def test_both_ends_are_padded_along_the_motion_and_clipped_to_the_range() -> None:
    settings = TrackSettings(pad=3, pad_grow=0.0)
    tracker = Tracker(settings)
    for f in range(10, 15):
        tracker.update(f, [("face", 0.9, _box(10.0 * f))])
    (track,) = tracker.finish()
    boxes = track_boxes(track, settings, 0, 100)
    assert min(boxes) == 7 and max(boxes) == 17
    assert boxes[7] == pytest.approx(_box(70.0))  # extrapolated backwards with the velocity
    assert boxes[17] == pytest.approx(_box(170.0))
    assert sorted(track_boxes(track, settings, 9, 12)) == [9, 10, 11]


def test_padded_boxes_grow_with_distance() -> None:
    settings = TrackSettings(pad=2, pad_grow=0.1)
    tracker = Tracker(settings)
    tracker.update(5, [("face", 0.9, _box(0))])
    (track,) = tracker.finish()
    near, far = track_boxes(track, settings, 0, 10)[4], track_boxes(track, settings, 0, 10)[3]
    assert (far[2] - far[0]) > (near[2] - near[0]) > 40


def test_only_tracks_with_a_full_confidence_detection_are_kept() -> None:
    tracker = Tracker()
    for f in range(4):
        tracker.update(f, [("face", 0.3 if f else 0.8, _box(0)), ("face", 0.3, _box(300))])
    tracks = confirmed(tracker.finish(), {"face": 0.5})
    assert len(tracks) == 1 and tracks[0].frames == [0, 1, 2, 3]  # weak frames of a strong track count


def test_report_dict_is_compact() -> None:
    tracker = Tracker()
    tracker.update(0, [("plate", 0.91234, (1.4, 2.6, 30.2, 20.0))])
    (track,) = tracker.finish()
    assert track.to_dict(boxes=True) == {
        "id": 0,
        "label": "plate",
        "first_frame": 0,
        "last_frame": 0,
        "detections": 1,
        "max_score": 0.9123,
        "boxes": [[0, 1, 3, 30, 20]],
    }


def test_a_shrinking_box_is_not_extrapolated_smaller() -> None:
    """A face leaving the frame is detected ever smaller; the padded frames keep its last size."""
    settings = TrackSettings(pad=3, pad_grow=0.0)
    tracker = Tracker(settings)
    for f, (x1, x2) in enumerate([(0, 60), (0, 50), (0, 40)]):
        tracker.update(f, [("face", 0.9, (x1, 100.0, x2, 160.0))])
    (track,) = tracker.finish()
    later = track_boxes(track, settings, 0, 10)[5]
    assert later[2] - later[0] >= 40 and later[3] - later[1] >= 60


def test_a_box_too_small_on_one_frame_takes_its_neighbours_size() -> None:
    settings = TrackSettings(pad=0, size_window=2)
    tracker = Tracker(settings)
    for f, s in enumerate([40.0, 40.0, 20.0, 40.0]):  # frame 2: blurred, the box came out small
        tracker.update(f, [("face", 0.9, (100 - s / 2, 100 - s / 2, 100 + s / 2, 100 + s / 2))])
    (track,) = tracker.finish()
    assert track_boxes(track, settings, 0, 4)[2] == pytest.approx((80.0, 80.0, 120.0, 120.0))
    assert track_boxes(track, TrackSettings(pad=0, size_window=0), 0, 4)[2] == pytest.approx((90, 90, 110, 110))


THRESHOLDS = {"face": 0.5, "plate": 0.5}


def test_a_look_that_sees_the_same_objects_is_steady() -> None:
    """Four frames apart, moved along its motion: the frames between may go unlooked."""
    tracker = Tracker()
    tracker.update(0, [("face", 0.9, _box(0))])
    assert tracker.steady(4, [("face", 0.9, _box(12))], since=0, thresholds=THRESHOLDS)


def test_a_new_or_lost_object_is_not_steady() -> None:
    """An object that appears or is lost between two looks makes the frames between looked at."""
    tracker = Tracker()
    tracker.update(0, [("face", 0.9, _box(0))])
    both = [("face", 0.9, _box(0)), ("face", 0.9, _box(300))]
    assert not tracker.steady(4, both, since=0, thresholds=THRESHOLDS)  # appeared
    assert not tracker.steady(4, [], since=0, thresholds=THRESHOLDS)  # lost
    assert not tracker.steady(4, [("plate", 0.9, _box(0))], since=0, thresholds=THRESHOLDS)  # another label


def test_weak_detections_coming_and_going_stay_steady() -> None:
    """Below the full threshold a detection only extends tracks: its blinks cost no dense look."""
    tracker = Tracker()
    tracker.update(0, [("face", 0.9, _box(0)), ("plate", 0.3, _box(300))])
    assert tracker.steady(4, [("face", 0.9, _box(0))], since=0, thresholds=THRESHOLDS)  # weak one gone
    weak_new = [("face", 0.9, _box(0)), ("plate", 0.3, _box(300)), ("face", 0.3, _box(600))]
    assert tracker.steady(4, weak_new, since=0, thresholds=THRESHOLDS)
    assert tracker._active and len(tracker._active) == 2  # steady() links nothing
