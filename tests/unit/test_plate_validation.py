"""tools/plate_validation.py --audited: the audit completes the labels, and the rule then keeps
recall as labelled and looks only where audited precision holds the bar."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from anonymizer.detection import Detection
from anonymizer_local.evaluation import ImageTruth

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
plate_validation = pytest.importorskip("plate_validation")

LABELLED = (100.0, 100.0, 180.0, 120.0)
MISSED_BY_LABELS = (300.0, 100.0, 380.0, 120.0)
UNCLEAR = (500.0, 100.0, 560.0, 115.0)
SIGN = (700.0, 100.0, 780.0, 120.0)


def _cache(scores=(0.9, 0.8, 0.7, 0.6)) -> dict:
    truth = ImageTruth(7, Path("x.jpg"), 1000, 500, {"plate": np.asarray([LABELLED], np.float32)})
    boxes = (LABELLED, MISSED_BY_LABELS, UNCLEAR, SIGN)
    found = {7: [Detection("plate", s, b) for s, b in zip(scores, boxes, strict=True)]}
    return {"web-cars": ([truth], found)}


@pytest.fixture
def audit(tmp_path) -> Path:
    path = tmp_path / "audit.json"
    path.write_text(json.dumps({"plates": {"web-cars/7": [MISSED_BY_LABELS]}, "ignore": {"web-cars/7": [UNCLEAR]}}))
    return path


def test_the_audit_adds_real_plates_and_drops_unclear_boxes(audit):
    plain = plate_validation.score(_cache(), 0.5)["web-cars"]
    checked = plate_validation.score(plate_validation.audited(_cache(), audit), 0.5)["web-cars"]
    assert (plain["recall@0.5"], plain["precision@0.5"]) == (1.0, 0.25)  # 1 of 4 boxes on a label
    assert checked["objects"] == 2 and checked["detections"] == 3  # the unclear box counts neither way
    assert (checked["recall@0.5"], checked["precision@0.5"]) == (1.0, pytest.approx(2 / 3, abs=1e-4))


def test_the_rule_keeps_recall_as_labelled_where_audited_precision_holds(audit, monkeypatch):
    monkeypatch.setattr(plate_validation, "GRID", np.array([0.5, 0.65, 0.75]))
    cache = _cache((0.9, 0.8, 0.7, 0.6))
    checked = plate_validation.audited(cache, audit)
    thr, pooled = plate_validation.choose(cache, checked)
    assert thr == 0.65  # 0.5 keeps the sign (audited precision 2/3); 0.65 drops it, both plates stay
    assert pooled["recall@0.5"] == 1.0 and pooled["precision@0.5"] == 1.0


def test_on_shrunk_photos_the_audit_is_scaled_along(audit):
    """``--shrink``: the photo and its detections at half size; the audit's boxes follow."""
    half = lambda b: tuple(v / 2 for v in b)  # noqa: E731
    truth = ImageTruth(7, Path("x.jpg"), 500, 250, {"plate": np.asarray([half(LABELLED)], np.float32)})
    boxes = (LABELLED, MISSED_BY_LABELS, UNCLEAR, SIGN)
    found = {7: [Detection("plate", 0.9, half(b)) for b in boxes]}
    checked = plate_validation.audited({"web-cars": ([truth], found)}, audit, {"web-cars": {7: 1000}})
    (got,) = checked["web-cars"][0]
    np.testing.assert_allclose(got.boxes["plate"], [half(LABELLED), half(MISSED_BY_LABELS)])
    assert [d.box for d in checked["web-cars"][1][7]] == [half(LABELLED), half(MISSED_BY_LABELS), half(SIGN)]


def test_the_rule_asks_the_audited_precision_of_every_source(audit, monkeypatch):
    """A second source with 8 plates and a sign scoring 0.7: at 0.65 the pooled audited precision
    holds 0.90 (10 of 11) but that source's does not (8 of 9), so the rule goes on to 0.75."""
    monkeypatch.setattr(plate_validation, "GRID", np.array([0.5, 0.65, 0.75]))
    cache = _cache((0.9, 0.8, 0.7, 0.6))
    plates = [(100.0 + 100 * k, 300.0, 180.0 + 100 * k, 320.0) for k in range(8)]
    truth = ImageTruth(8, Path("y.jpg"), 1000, 500, {"plate": np.asarray(plates, np.float32)})
    found = [Detection("plate", 0.95, b) for b in plates] + [Detection("plate", 0.7, SIGN)]
    cache["open-lpr"] = ([truth], {8: found})
    checked = plate_validation.audited(cache, audit)
    at_065 = plate_validation.score(checked, 0.65)
    assert at_065["all (pooled)"]["precision@0.5"] >= 0.9 > at_065["open-lpr"]["precision@0.5"]
    thr, pooled = plate_validation.choose(cache, checked)
    assert thr == 0.75 and pooled["recall@0.5"] == 1.0
