"""Networks run small inputs side by side and big or lone ones wide (anonymizer.networks)."""

import cv2
import numpy as np
import pytest

from anonymizer.detection import HEADS, Pass, get_detector, prepare
from anonymizer.networks import WIDE_MIN_PIXELS


@pytest.fixture(scope="module")
def frame(shared_data) -> np.ndarray:
    path = sorted((shared_data / "plates" / "romania-dashcam").rglob("*.jpg"))[0]
    return cv2.resize(cv2.imread(str(path)), (1024, 576), interpolation=cv2.INTER_AREA)


def test_how_an_input_runs_never_changes_its_outputs(frame):
    """Single-threaded runs side by side, and one multi-threaded run, agree bit for bit."""
    network = get_detector("plate").network
    blobs = [prepare(frame, Pass(s, 0, 0, 1024, 576))[0] for s in (1.0, 0.5, 0.25, 0.4)]
    sizes = [b.shape[2] * b.shape[3] for b in blobs]
    assert max(sizes) >= WIDE_MIN_PIXELS > min(sizes)  # both ways are exercised
    together = network.run(HEADS, blobs)
    for blob, outputs in zip(blobs, together, strict=True):
        for session in (network.session, network.wide):
            for a, b in zip(outputs, session.run(HEADS, {"input": blob}), strict=True):
                assert np.array_equal(a, b)


def test_a_failing_run_is_a_detection_error_from_either_path(frame):
    from anonymizer.errors import DetectionError

    network = get_detector("face").network
    small = prepare(frame, Pass(0.25, 0, 0, 1024, 576))[0]
    with pytest.raises(DetectionError, match="failed to run"):
        network.run(["no-such-output"], [small, small])  # side by side, on the pool
    with pytest.raises(DetectionError, match="failed to run"):
        network.run(["no-such-output"], [small])  # alone, wide


def test_sessions_ask_for_exact_int8_products_on_cpus_without_vnni():
    """Without it, x86 CPUs lacking VNNI saturate uint8 x int8 sums and lose faces (R 0.870 ->
    0.840 on street-masks-dev on an AVX2-only EPYC): the answers must not depend on the host."""
    network = get_detector("face").network
    for session in (network.session, network.wide):
        assert session.get_session_options().get_session_config_entry("session.x64quantprecision") == "1"
