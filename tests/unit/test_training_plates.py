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


SHARED_PLATES = os.path.join(os.path.dirname(__file__), "../../../shared/data/plates")


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(SHARED_PLATES, "web-cars")), reason="shared plate data not available"
)
def test_recorded_splits_are_disjoint_and_duplicate_aware():
    """The recorded split holds every source's validation part apart from training, and no
    training photo of web-cars (the set with many copies) is a copy of a validation photo."""
    from training.plates_data import DUPLICATE_MAX_BITS, VAL_VIDEOS, dhash, load_parts, read_splits, video_of

    splits = read_splits()
    parts = load_parts(splits)
    train = {(i.source, i.image_id) for i in parts["train"]}
    assert not train & {(i.source, i.image_id) for i in parts["val"]}
    for name in ("romania-dashcam", "web-cars", "openimages-dev"):
        assert parts[f"val/{name}"], name
    assert {video_of(i.extra["file_name"]) for i in parts["val/romania-dashcam"]} == set(VAL_VIDEOS)
    web_train = [i for i in parts["train"] if i.source == "web-cars"]
    web_val = np.stack([dhash(i.path) for i in parts["val/web-cars"]])
    for it in web_train:
        assert (web_val != dhash(it.path)).sum(1).min() > DUPLICATE_MAX_BITS, it.path


def test_ignore_regions_switch_off_negatives_only_there():
    from training.plates_data import ignore_weights

    wt = ignore_weights(np.array([[40, 40, 80, 60]], np.float32), 320)
    assert wt.shape == (1, 80, 80)
    assert wt[0, 10:15, 10:20].max() == 0 and wt.sum() == 80 * 80 - 5 * 10


def test_training_draws_photos_at_the_scale_the_product_sees_them():
    """Small photos are upscaled to the plate card's min_side, the rest looked at 1:1 (bigger ones
    by their native tiles): training crops 'at the inference scale' must use the same factor."""
    from anonymizer.detection import ModelCard
    from training.plates_data import inference_scale

    min_side = ModelCard.load("plate").min_side
    assert inference_scale((min_side // 2, min_side // 4, 3)) == pytest.approx(2.0)
    assert inference_scale((720, 960, 3)) == 1.0
    assert inference_scale((2160, 3840, 3)) == 1.0


def test_the_audit_adds_real_plates_and_keeps_checked_non_plates_as_negatives(tmp_path):
    """Plates the labels miss (found by eye) become positives; boxes looked at and found not to be
    plates are never switched off by the scanned ignore regions; unsure ones are ignored."""
    import json

    from training import plates_data as D

    item = D.Item("x.jpg", 7, np.array([[0, 0, 10, 5]], np.float32), "open-lpr")
    audit = {
        "plates": {"open-lpr/7": [[50, 50, 90, 65]]},
        "checked": {"open-lpr/7": [[100, 100, 140, 115]]},
        "unsure": {"open-lpr/7": [[200, 200, 220, 207]]},
    }
    (tmp_path / "audit.json").write_text(json.dumps(audit))
    (tmp_path / "ignore.json").write_text(json.dumps({"open-lpr": {"7": [[101, 100, 141, 116], [300, 300, 330, 310]]}}))
    assert D.add_audited_plates([item], str(tmp_path / "audit.json")) == 1
    assert item.boxes.tolist()[-1] == [50, 50, 90, 65]
    assert D.apply_ignore([item], str(tmp_path / "ignore.json"), str(tmp_path / "audit.json")) == 2
    assert sorted(item.ignore.tolist()) == [[200, 200, 220, 207], [300, 300, 330, 310]]


def test_a_packed_photo_keeps_its_small_plates_and_its_scale(tmp_path, monkeypatch):
    """The device pack scales a photo down only while its smallest plate keeps ``min_plate`` px,
    moves boxes and ignore regions along, and remembers the original shape and the scale, so
    crops 'at the scale the product sees' are drawn at the original's scale."""
    import json

    from training import device_pack
    from training import plates_data as D

    assert device_pack.pack_scale((720, 1280, 3), np.array([[0, 0, 150, 40]], np.float32), 30, 1024, 0.25) == 0.25
    assert device_pack.pack_scale((720, 960, 3), np.array([[0, 0, 20, 8]], np.float32), 30, 1024, 0.25) == 1.0
    assert device_pack.pack_scale((1000, 2048, 3), np.zeros((0, 4), np.float32), 30, 1024, 0.25) == 0.5
    assert [i for i in range(8) if device_pack.kept(i, 0.5)] == [0, 2, 4, 6]

    photo = np.full((400, 800, 3), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "car.jpg"), photo)
    item = D.Item(str(tmp_path / "car.jpg"), 3, np.array([[100, 100, 260, 140]], np.float32), "web-cars")
    item.ignore = np.array([[400, 100, 480, 120]], np.float32)
    monkeypatch.setattr(D, "load_parts", lambda: {"train": [item]})
    monkeypatch.setattr(D, "face_backgrounds", lambda: [])
    summary = device_pack.pack(str(tmp_path / "pack"), min_plate=40, floor=0.1, shares={})
    assert summary["photos"] == 1 and summary["plates"] == 1
    items, backgrounds = D.load_pack(str(tmp_path / "pack"))
    (packed,) = items
    assert backgrounds == [] and packed.extra == {"scale": 0.25, "shape": (400, 800)}
    assert cv2.imread(packed.path).shape[:2] == (100, 200)
    assert packed.boxes.tolist() == [[25, 25, 65, 35]] and packed.ignore.tolist() == [[100, 25, 120, 30]]
    assert json.loads((tmp_path / "pack" / D.PACK_ITEMS).read_text())["summary"]["settings"]["min_plate"] == 40
    # a crop "at the product's scale" of the packed photo is drawn 4x: the original's 1:1
    assert D.inference_scale(packed.extra["shape"]) / packed.extra["scale"] == pytest.approx(4.0)


def test_the_box_heads_targets_are_what_the_product_undoes_and_mirror_with_the_crop():
    torch = pytest.importorskip("torch")
    from anonymizer.verification import refined_boxes
    from training.train_plate_verifier import BoxVerifier, box_loss, edge_deltas

    box, plate = [100.0, 50.0, 140.0, 62.0], [96.0, 52.0, 141.0, 66.0]
    deltas = edge_deltas(box, plate)
    np.testing.assert_allclose(refined_boxes(np.float32([box]), np.float32([deltas]))[0], plate, atol=1e-4)

    class Mirror(torch.nn.Module):
        """Answers the deltas of a crop from its pixels: right edge where the crop is bright."""

        def forward(self, x):
            bright_right = (
                x[..., x.shape[-1] // 2 :].mean((1, 2, 3)) > x[..., : x.shape[-1] // 2].mean((1, 2, 3))
            ).float()
            d = torch.stack([-0.2 * (1 - bright_right), 0 * bright_right, 0.2 * bright_right, 0 * bright_right], 1)
            return torch.zeros(len(x), 1), d

    x = torch.zeros(32, 3, 8, 16)
    x[..., 8:] = 1.0  # bright on the right: the target says the right edge moves out
    targets = torch.tensor([[0.0, 0.0, 0.2, 0.0]] * 32)
    loss = box_loss(x, torch.full((32,), -1.0).index_fill(0, torch.tensor([0]), 1.0), targets, torch.Generator())
    bce_only = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.zeros(1), torch.ones(1), pos_weight=torch.tensor(1.0)
    )
    # whichever crops were mirrored, their targets were mirrored with them: no box loss is left
    assert float(loss(Mirror(), torch.arange(32), torch.tensor(1.0))) == pytest.approx(float(bce_only), abs=1e-3)
    assert BoxVerifier(8)(torch.zeros(2, 3, 48, 96))[1].shape == (2, 4)
