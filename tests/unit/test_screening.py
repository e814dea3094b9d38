"""Screened native passes: a coarse run first, then full scale only where it saw something."""

import cv2
import numpy as np
import pytest

from anonymizer.detection import (
    SCREEN_SCALE,
    Pass,
    get_detector,
    get_shared_detector,
    proposal_regions,
    run_cost,
    run_plan,
    screening,
)

BOTH = frozenset({"face", "plate"})


def test_big_native_passes_are_screened_and_upscaled_or_small_ones_are_not():
    assert screening(Pass(1.0, 0, 0, 1920, 1080)).screened
    assert not screening(Pass(1.0, 0, 0, 1280, 720)).screened  # < 1 MP: the screen would not pay
    assert not screening(Pass(2.5, 0, 0, 410, 410)).screened  # upscaled small photo
    assert screening(Pass(1.0, 0, 0, 1920, 1920)).screened  # a tile of a big photo


def _hot(cells: list[tuple[int, int]], shape=(90, 160)) -> np.ndarray:
    hot = np.zeros(shape, bool)
    for y, x in cells:
        hot[y, x] = True
    return hot


def test_a_spot_becomes_a_margin_wide_pass_on_the_whole_pass_grid():
    p = Pass(1.0, 0, 0, 1920, 1080, screened=True)
    screen = Pass(SCREEN_SCALE, 0, 0, 1920, 1080)
    cell = 4 / SCREEN_SCALE  # image px per heatmap cell
    [r] = proposal_regions(_hot([(40, 80)]), screen, p, margin=32)
    assert r.scale == 1.0 and not r.screened
    assert all(v % 32 == 0 for v in (r.x0, r.y0))
    assert r.x0 <= 80 * cell - 32 and r.x1 >= 81 * cell + 32
    assert r.y0 <= 40 * cell - 32 and r.y1 >= 41 * cell + 32
    assert r.area < 0.02 * p.area


def test_far_spots_run_apart_and_near_ones_together():
    p, screen = Pass(1.0, 0, 0, 1920, 1080, screened=True), Pass(SCREEN_SCALE, 0, 0, 1920, 1080)
    assert len(proposal_regions(_hot([(10, 10), (80, 150)]), screen, p, margin=32)) == 2
    assert len(proposal_regions(_hot([(40, 80), (40, 84)]), screen, p, margin=32)) == 1


def test_a_crowded_screen_costs_more_in_spots_than_the_whole_pass():
    p, screen = Pass(1.0, 0, 0, 1920, 1080, screened=True), Pass(SCREEN_SCALE, 0, 0, 1920, 1080)
    checker = np.indices((90, 160)).sum(axis=0) % 12 == 0  # spots everywhere
    assert run_cost(proposal_regions(checker, screen, p, margin=32)) >= run_cost([p])


class CountingRuns:
    """Wraps a detector's ``run_jobs`` and records how many network-input pixels each round ran."""

    def __init__(self, run_jobs):
        self.run_jobs, self.rounds = run_jobs, []

    def __call__(self, image, jobs):
        self.rounds.append(sum(p.area * p.scale**2 for p, _ in jobs))
        return self.run_jobs(image, jobs)


def _plan(detector, width, height):
    return [(p, (detector.label,)) for p in detector.plan(width, height)]


def test_an_empty_frame_needs_no_full_scale_run():
    face = get_detector("face")
    runs = CountingRuns(face.run_jobs)
    found = run_plan(np.full((1080, 1920, 3), 128, np.uint8), _plan(face, 1920, 1080), runs, {"face": face.card},
                     {"face": face.card.threshold})  # fmt: skip
    assert runs.rounds[1] == 0 and sum(len(b) for b, _ in found["face"]) == 0


def test_small_faces_are_found_through_their_spots(astronaut_bgr):
    """~18 px faces in a 1080p frame are too small for the screening run to find, not to notice."""
    frame = np.full((1080, 1920, 3), 120, np.uint8)
    small = cv2.resize(astronaut_bgr[40:200, 150:290], (28, 32), interpolation=cv2.INTER_AREA)
    spots = [(300, 200), (1500, 800), (900, 500)]
    for x, y in spots:
        frame[y : y + 32, x : x + 28] = small
    face = get_detector("face")
    runs = CountingRuns(face.run_jobs)
    parts = run_plan(frame, _plan(face, 1920, 1080), runs, {"face": face.card}, {"face": face.card.threshold})
    found = face.finish(parts["face"], 1920, 1080)
    centres = [((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in found]
    for x, y in spots:
        assert any(abs(cx - (x + 14)) < 12 and abs(cy - (y + 16)) < 12 for cx, cy in centres), (x, y, centres)
    assert 0 < runs.rounds[1] < 0.2 * 1920 * 1080  # the full-scale runs covered a small part of the frame


@pytest.fixture(scope="module")
def street_frame(shared_data) -> np.ndarray:
    """A real dashcam frame at 1080p with two street photos (people) pasted into it."""
    path = sorted((shared_data / "plates" / "romania-dashcam").rglob("*.jpg"))[40]
    frame = cv2.resize(cv2.imread(str(path)), (1920, 1080), interpolation=cv2.INTER_LINEAR)
    photos = sorted((shared_data / "faces" / "street-masks-dev" / "images").glob("*.jpg"))[:2]
    for k, photo in enumerate(photos):
        image = cv2.imread(str(photo))
        scale = 420 / image.shape[0]
        image = cv2.resize(image, (round(image.shape[1] * scale), 420), interpolation=cv2.INTER_AREA)[:, :600]
        frame[40 + 460 * k : 40 + 460 * k + 420, 1300 : 1300 + image.shape[1]] = image
    return frame


def test_screening_keeps_what_the_whole_native_pass_finds(street_frame):
    """Every confident plate or face of the unscreened pass is also found with screening (the
    product's answers: each label's verifier has had its say)."""
    detector = get_shared_detector(BOTH)
    cards = {k: m.card for k, m in detector.members.items()}
    thresholds = {k: c.threshold for k, c in cards.items()}
    plans = {}
    for screened in (True, False):
        plan = [(p if screened else Pass(p.scale, p.x0, p.y0, p.x1, p.y1), ("face", "plate"))
                for p in get_detector("plate").plan(1920, 1080)]  # fmt: skip
        parts = run_plan(street_frame, plan, detector.run_jobs, cards, thresholds)
        plans[screened] = {
            k: m.verify(street_frame, m.finish(parts[k], 1920, 1080), thresholds[k])
            for k, m in detector.members.items()
        }
    for label in cards:
        confident = [d for d in plans[False][label] if d.score >= thresholds[label] + 0.1]
        assert confident, label  # the frame shows both
        for whole in confident:
            assert any(_iou(whole.box, d.box) > 0.5 for d in plans[True][label]), (label, whole)


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union else 0.0
