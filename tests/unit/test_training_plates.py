"""Training-side helpers for the plate detector: target encoding matches the decoder, splits."""

import os

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")


def test_targets_roundtrip_through_decoder():
    from training.eval_plates import decode
    from training.plates_data import make_targets

    S = 320
    boxes = np.array([[50.3, 60.7, 150.1, 90.2], [200.0, 250.0, 231.0, 261.0]], np.float32)
    hm, ind, msk, scale, off = make_targets(boxes, S)
    h = w = S // 4
    assert hm.shape == (1, h, w) and hm.max() == 1.0 and int(msk.sum()) == 2
    sc_map = np.zeros((1, 2, h, w), np.float32)
    off_map = np.zeros((1, 2, h, w), np.float32)
    for k in range(2):
        iy, ix = divmod(int(ind[k]), w)
        sc_map[0, :, iy, ix] = scale[k]
        off_map[0, :, iy, ix] = off[k]
    got, scores = decode(hm[None], sc_map, off_map, threshold=0.99)
    got = got[np.argsort(got[:, 0])]
    np.testing.assert_allclose(got, boxes, atol=1e-3)


def test_nms_keeps_best():
    from anonymizer.detection import nms  # the one the plate evaluation uses

    b = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    keep = nms(b, np.array([0.9, 0.8, 0.7]), 0.4)
    assert list(keep) == [0, 2]


def test_working_image_policy():
    from training.plates_data import working_image

    x, f = working_image(np.zeros((416, 300, 3), np.uint8), 640)
    assert f == pytest.approx(640 / 416) and x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0
    x, f = working_image(np.zeros((720, 1280, 3), np.uint8), 640)
    assert f == 1.0 and x.shape == (1, 3, 736, 1280)


def test_synthetic_plate_renders():
    from training.plates_data import synthetic_plate

    rng = np.random.RandomState(0)
    for _ in range(10):
        p = synthetic_plate(rng)
        assert p.ndim == 3 and p.shape[2] == 3 and p.shape[1] >= p.shape[0]


def test_two_line_plates_are_square_ish_with_ink_in_both_rows():
    from training.plates_data import two_line_plate

    rng = np.random.RandomState(1)
    for _ in range(10):
        p = two_line_plate(rng)
        assert 1.0 <= p.shape[1] / p.shape[0] <= 2.2
        grey = cv2.cvtColor(p, cv2.COLOR_BGR2GRAY).astype(np.float32)
        h = p.shape[0]
        rows = [grey[int(h * 0.1) : int(h * 0.45)], grey[int(h * 0.55) : int(h * 0.9)]]
        assert all(r.std() > 20 for r in rows)  # characters in both rows, not a blank half


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(os.path.dirname(__file__), "../../../shared/data/plates/web-cars")),
    reason="shared plate data not available",
)
def test_splits_disjoint_and_recorded():
    import json

    from training.plates_data import SPLITS, load_parts, make_splits

    s = make_splits()
    assert s["romania-dashcam"]["holdout_video"] == "nightride_type3_001"
    parts = load_parts()
    train = {(i.source, i.image_id) for i in parts["train"]}
    for name in ("holdout_dashcam", "holdout_web", "thresh_dashcam", "thresh_web"):
        assert not train & {(i.source, i.image_id) for i in parts[name]}
    assert len(parts["holdout_web"]) == 55
    if os.path.exists(SPLITS):
        with open(SPLITS) as f:
            assert json.load(f) == json.loads(json.dumps(s))
