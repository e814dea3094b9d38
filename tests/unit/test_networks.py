"""Networks run single-threaded side by side, big inputs in stitched pieces (anonymizer.networks)."""

import cv2
import numpy as np
import pytest

from anonymizer.detection import HEADS, Pass, get_detector, prepare
from anonymizer.networks import ALIGN, pieces, spans


@pytest.mark.parametrize("length,count", [(544, 2), (1088, 2), (1920, 3), (64, 5), (32, 1)])
def test_spans_cover_the_length_on_the_grid(length, count):
    parts = spans(length, count)
    assert parts[0][0] == 0 and parts[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    assert all(start % ALIGN == 0 and end > start for start, end in parts)
    assert len(parts) == min(count, length // ALIGN)


def test_small_inputs_run_whole_and_big_ones_give_every_worker_a_piece():
    assert pieces(320, 320, workers=2) == [(slice(0, 320), slice(0, 320))]
    parts = pieces(1088, 1920, workers=2)
    assert len(parts) == 2
    covered = np.zeros((1088, 1920), np.int8)
    for rows, cols in parts:
        covered[rows, cols] += 1
    assert (covered == 1).all()  # the parts tile the input exactly; margins are added when run


@pytest.fixture(scope="module")
def frame(shared_data) -> np.ndarray:
    path = sorted((shared_data / "plates" / "romania-dashcam").rglob("*.jpg"))[0]
    return cv2.resize(cv2.imread(str(path)), (1024, 576), interpolation=cv2.INTER_AREA)


def test_stitched_pieces_give_what_one_run_gives(frame):
    """The heads of a split run differ from one whole run only by seam noise (64 px of context)."""
    network = get_detector("face").network
    blob, _ = prepare(frame, Pass(1.0, 0, 0, 1024, 576))
    assert len(pieces(576, 1024, network.workers)) > 1 or network.workers == 1
    whole = network.session.run(HEADS, {"input": blob})
    [stitched] = network.run(HEADS, [blob])
    assert [a.shape for a in whole] == [b.shape for b in stitched]
    assert np.abs(whole[0] - stitched[0]).max() < 0.05  # heatmap


def test_inputs_run_together_give_the_same_outputs_as_alone(frame):
    network = get_detector("plate").network
    blobs = [prepare(frame, Pass(s, 0, 0, 1024, 576))[0] for s in (1.0, 0.5, 0.25)]
    together = network.run(HEADS, blobs)
    for blob, outputs in zip(blobs, together, strict=True):
        [alone] = network.run(HEADS, [blob])
        for a, b in zip(outputs, alone, strict=True):
            assert np.array_equal(a, b)
