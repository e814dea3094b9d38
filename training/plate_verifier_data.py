"""Data for the plate verifier: plate-detector proposals on every plate source, labelled and split.

Why proposals: the verifier must judge exactly what the detector hands it in production (its
boxes at a low score), so it learns from the shipped detector's own proposals — true plates, and
what else it fires on (signs, stickers, timestamps, badges, grilles).

- Proposals come from the shipped plate detector as ``anonymize --targets plate`` runs it (its
  card without any verifier, the product's passes, images decoded as the product decodes them).
- Splits are training/splits.json (duplicate-aware, per source): the training ids give training
  proposals down to ``TRAIN_FLOOR``; the validation ids (never trained on) give proposals down
  to ``VAL_FLOOR``, the floor tools/plate_validation.py scores from, where the operating point
  is chosen.
- Labels: 1 when IoU >= ``POSITIVE_IOU`` with a labelled plate; 0 when IoU < ``NEGATIVE_IOU`` with
  every labelled plate and clear of every ignore region (build/data/ignore.json); -1 otherwise.
  The audit (training/plate_audit.json, by eye on contact sheets) turns unlabelled real plates
  into positives; openimages-dev negatives are used only where audited (its labels are not
  exhaustive).
- Photos without cars: every proposal on the face verifier's training half of
  ``faces/street-masks-dev`` (people, shop signs, captions, watermarks; two audits by eye of
  every plate box the product put on that set found no plate) is a negative. Its validation half
  (odd ids, ``face_verifier_splits.json``) is where plate boxes per photo without cars are counted.

    python -m training.plate_verifier_data              # cached in /tmp/anonymizer-plate-verifier
    python -m training.plate_verifier_data --sheets     # contact sheets of the negatives, to audit
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from anonymizer import imageio
from anonymizer.detection import ModelCard
from anonymizer_local.evaluation import iou_matrix

from .face_verifier_data import DATA, near, proposal_detector, validation_ids
from .plates_data import IGNORE, SOURCES, Source, audited, key, load_coco, read_splits

CACHE = Path("/tmp/anonymizer-plate-verifier")
TRAIN_FLOOR = 0.1  # proposals the verifier learns from
VAL_FLOOR = 0.05  # as tools/plate_validation.py: every threshold of its grid is scored from these
POSITIVE_IOU = 0.4
NEGATIVE_IOU = 0.1
MAX_TRAIN: dict[str, int] = {}  # per source, a fixed, evenly spaced subset (verifier 1: open-lpr 900 of 2,323)
CHECKED_IOU = 0.6  # a proposal this close to a box the audit found not to be a plate is that same thing
BACKGROUND = "street-masks-dev"  # photos without cars: their proposals are negatives


def image_ids(src: Source, split: str, items) -> list:
    """The items of ``split`` ("train" or "val") of a source, subsampled for training by ``MAX_TRAIN``."""
    val = set(read_splits()[src.name]["val_image_ids"])
    chosen = [it for it in items if (it.image_id in val) == (split == "val")]
    cap = MAX_TRAIN.get(src.name) if split == "train" else None
    if cap and len(chosen) > cap:
        chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, cap).round().astype(int)]
    return chosen


def make_proposals(cache: Path = CACHE, splits: tuple[str, ...] = ("val", "train")) -> None:
    """``<split>-<source>.json`` in ``cache``: per image its plates, ignore regions and proposals."""
    cache.mkdir(parents=True, exist_ok=True)
    detector = proposal_detector("plate")  # the shipped detector without its verifier
    ignore = json.loads(Path(IGNORE).read_text()) if Path(IGNORE).exists() else {}
    for split in splits:
        floor = VAL_FLOOR if split == "val" else TRAIN_FLOOR
        for src in SOURCES:
            out = cache / f"{split}-{src.name}.json"
            if out.exists() or not Path(src.root, "annotations.json").exists():
                continue
            items = image_ids(src, split, load_coco(src.root, src.name))
            write_proposals(detector, items, floor, out, ignore.get(src.name, {}))
    if "train" in splits:
        background_proposals(detector, cache)


def background_proposals(detector, cache: Path = CACHE) -> None:
    """``train-street-masks-dev.json``: proposals on the training half of the people photos."""
    out = cache / f"train-{BACKGROUND}.json"
    root = DATA / "faces" / BACKGROUND
    if out.exists() or not (root / "annotations.json").exists():
        return
    items = load_coco(str(root), BACKGROUND)  # no plate category there: no plates
    held = validation_ids("street", items)
    write_proposals(detector, [it for it in items if it.image_id not in held], TRAIN_FLOOR, out, {})


def write_proposals(detector, items: list, floor: float, out: Path, ignore: dict) -> None:
    """The detector's proposals from ``floor`` on each item, with its plates and ignore regions, into ``out``."""
    t0, records = time.perf_counter(), []
    for it in items:
        dets = detector.detect(imageio.decode(Path(it.path).read_bytes()).pixels, floor)
        records.append(
            {
                "source": it.source,
                "id": it.image_id,
                "path": it.path,
                "plates": it.boxes.tolist(),
                "ignore": ignore.get(str(it.image_id), []),
                "boxes": [list(d.box) for d in dets],
                "scores": [d.score for d in dets],
            }
        )
    out.write_text(json.dumps(records))
    n = sum(len(r["boxes"]) for r in records)
    print(f"{out.stem}: {len(items)} images, {n} proposals, {time.perf_counter() - t0:.0f} s", flush=True)


def load_proposals(split: str, cache: Path = CACHE) -> list[dict]:
    names = [src.name for src in SOURCES] + [BACKGROUND]
    return [r for name in names if (p := cache / f"{split}-{name}.json").exists() for r in json.loads(p.read_text())]


def in_ignore(boxes: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """A flag per box: it touches an ignore region (IoU >= 0.1 or a third of the box inside one)."""
    if not len(ignore) or not len(boxes):
        return np.zeros(len(boxes), bool)
    x1 = np.maximum(boxes[:, None, 0], ignore[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], ignore[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], ignore[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], ignore[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
    return (iou_matrix(boxes, ignore).max(1) >= NEGATIVE_IOU) | ((inter / area[:, None]).max(1) >= 1 / 3)


def label_proposals(record: dict, audit: dict | None = None, trust_labels: bool = False) -> np.ndarray:
    """Per proposal: 1 plate, 0 not a plate, -1 unsure (neither trained on nor counted).

    Audited real plates are positives; openimages-dev unlabelled proposals are negatives only
    where the audit looked at them (``checked``), since its labels miss plates — unless
    ``trust_labels`` (the contact sheets, which are how the audit looks)."""
    audit = audit if audit is not None else audited()
    k = key(record["source"], record["id"])
    boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
    plates = np.asarray(record["plates"], np.float32).reshape(-1, 4)
    iou = iou_matrix(boxes, plates).max(1) if len(plates) else np.zeros(len(boxes), np.float32)
    labels = np.full(len(boxes), -1, np.int64)
    labels[iou >= POSITIVE_IOU] = 1
    negative = (iou < NEGATIVE_IOU) & ~in_ignore(boxes, np.asarray(record["ignore"], np.float32).reshape(-1, 4))
    if record["source"] == "openimages-dev" and not trust_labels:
        negative &= near(boxes, audit["checked"].get(k), CHECKED_IOU)
    labels[negative] = 0
    labels[near(boxes, audit["unsure"].get(k))] = -1
    labels[near(boxes, audit["plates"].get(k))] = 1
    return labels


def sheets(
    cache: Path = CACHE,
    out: Path = Path("/tmp/plate-audit"),
    below: int = 96,
    extra: int = 64,
    source: str | None = None,
    fresh: bool = False,
) -> None:
    """Contact sheets of the training negatives (openimages-dev's unlabelled proposals included:
    the sheets are its audit), highest score first: every one at or above the card's threshold,
    then ``below`` random ones under it and ``extra`` more from openimages-dev (whose negatives
    are used only where audited). ``source``: that source's only; ``fresh``: only proposals the
    audit has not looked at yet (a second round). ``index.json`` maps each numbered tile to its
    image key and box."""
    from anonymizer.verification import crop_with_context

    out.mkdir(parents=True, exist_ok=True)
    threshold = ModelCard.load("plate").threshold
    empty: dict = {"plates": {}, "checked": {}, "unsure": {}}
    audit = audited()
    rows = []
    for rec in load_proposals("train", cache):
        if source and rec["source"] != source:
            continue
        k = key(rec["source"], rec["id"])
        boxes = np.asarray(rec["boxes"], np.float32).reshape(-1, 4)
        seen = np.zeros(len(boxes), bool)
        for kind in ("plates", "checked", "unsure"):
            seen |= near(boxes, audit[kind].get(k), CHECKED_IOU)
        labels = label_proposals(rec, empty, True)
        for box, score, lab, old in zip(rec["boxes"], rec["scores"], labels, seen, strict=True):
            if lab == 0 and not (fresh and old):
                rows.append((score, rec["source"], rec["id"], rec["path"], box))
    rows.sort(key=lambda r: -r[0])
    top = [r for r in rows if r[0] >= threshold]
    rest = [r for r in rows if r[0] < threshold]
    rng = np.random.RandomState(0)
    pick = set(rng.choice(len(rest), min(below, len(rest)), replace=False).tolist())
    oi = [i for i, r in enumerate(rest) if r[1] == "openimages-dev" and i not in pick]
    pick |= set(rng.choice(oi, min(extra, len(oi)), replace=False).tolist())
    chosen = top + [rest[i] for i in sorted(pick)]
    index, side, cols, per_sheet = [], 128, 10, 80
    for s in range(0, len(chosen), per_sheet):
        tiles = []
        for i, (score, source, rid, path, box) in enumerate(chosen[s : s + per_sheet], start=s):
            image = imageio.decode(Path(path).read_bytes()).pixels
            tile = crop_with_context(image, box, side, 2.5)
            long = max(box[2] - box[0], box[3] - box[1], 1.0)
            w, h = (box[2] - box[0]) / long * side / 5, (box[3] - box[1]) / long * side / 5
            c = side // 2
            cv2.rectangle(tile, (int(c - w), int(c - h)), (int(c + w), int(c + h)), (0, 255, 0), 1)
            cv2.putText(tile, f"{i}", (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1)
            tiles.append(tile)
            index.append({"i": i, "key": key(source, rid), "box": [round(v, 1) for v in box], "score": score})
        while len(tiles) % cols:
            tiles.append(np.zeros_like(tiles[0]))
        grid = np.vstack([np.hstack(tiles[r : r + cols]) for r in range(0, len(tiles), cols)])
        cv2.imwrite(str(out / f"sheet{s // per_sheet:02d}.png"), grid)
    (out / "index.json").write_text(json.dumps(index))
    print(f"{len(top)} negatives >= {threshold}, {len(chosen) - len(top)} sampled below; sheets in {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--sheets", action="store_true", help="contact sheets of the negatives, for the audit")
    parser.add_argument("--split", action="append", choices=["val", "train"], help="only these splits")
    parser.add_argument("--source", help="sheets of this source's negatives only")
    parser.add_argument("--fresh", action="store_true", help="sheets of proposals the audit has not looked at")
    parser.add_argument("--below", type=int, default=96, help="sheets: random negatives under the threshold")
    parser.add_argument("--out", type=Path, default=Path("/tmp/plate-audit"), help="sheets: where")
    args = parser.parse_args()
    if args.sheets:
        sheets(args.cache, args.out, args.below, 64, args.source, args.fresh)
    else:
        make_proposals(args.cache, tuple(args.split or ("train", "val")))
