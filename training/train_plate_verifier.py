"""Train the plate verifier (the face verifier's tiny CNN on a crop with context), export ONNX,
choose the operating point on the mixed validation split, write its card.

Recipe (figures in models/plate-verifier.md):
- positives: the plate detector's proposals on the training split that hit a labelled plate
  (IoU >= 0.4), the labelled plates themselves and the real unlabelled plates of the audit
  (training/plate_audit.json), each with jittered boxes;
- negatives: proposals clear of every labelled plate and ignore region (openimages-dev: only
  those the audit looked at), i.e. signs, stickers, timestamps, badges, grilles, text;
- the face verifier's network, augmentation and export (training/train_face_verifier.py);
- the operating point (detector threshold, verifier floor and weight) on the 743 validation
  photos, never trained on, scored exactly as tools/plate_validation.py scores them.

    python -m training.plate_verifier_data        # proposals (cached outside the repository)
    python -m training.train_plate_verifier       # crops, training (1 thread, minutes), export, card
"""

from __future__ import annotations

import hashlib
import json
import time
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from anonymizer import imageio
from anonymizer.detection import Detection
from anonymizer.verification import crop_height, crop_with_context, refined_boxes, verified_scores
from anonymizer_local.evaluation import evaluate, iou_matrix, load_coco, pooled  # pooled as the validation tool

from .plate_verifier_data import CACHE, VAL_FLOOR, label_proposals, load_proposals
from .plates_data import AUDIT, SOURCES, audited, key
from .train_face_verifier import (
    MODELS,
    TinyVerifier,
    augment,
    export,
    fit,
    flips,
    jitter,
    predict,
    to_tensor,
    verifier_arguments,
)

SIZE = 96  # crop width, px: a plate keeps 48 px of its width
CONTEXT = 2.0  # crop width / proposal's width (a plate and the car around it)
ASPECT = 0.5  # crop height / width: wide, like a plate with its bumper
BASE_THRESHOLD = 0.475  # plate v6 alone, by the rule (plate_validation.py --card verifier=null --choose)
THRESHOLDS = np.round(np.arange(0.10, 0.601, 0.025), 3)
WEIGHTS = (0.0, 0.5, 1.0)
FLOORS = (0.0, 0.1, 0.2, 0.3, 0.5)
REFINE_IOU = 0.3  # a box at least this close to a labelled plate teaches the box head where its edges are
WIDE_JITTER = 0.25  # one more copy of each labelled plate, this far off, for the box head only
BOX_LOSS_WEIGHT = 1.0


class BoxVerifier(TinyVerifier):
    """The verifier with a second head: where the plate's edges are, from the proposal's
    (:func:`edge_deltas`); the product moves the box there (``refine`` in its card)."""

    def __init__(self, width: int = 24):
        super().__init__(width)
        self.box = nn.Linear(self.head.in_features, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.embed(x)
        return self.head(f), self.box(f)


class JudgedBoxes(nn.Module):
    """A trained verifier's verdicts and a box network's edges in one graph (one run, two answers):
    a box head for a shipped verifier without retraining what it decides, whose threshold and
    audit then keep their meaning."""

    def __init__(self, judge: TinyVerifier, boxes: BoxVerifier):
        super().__init__()
        self.judge, self.boxes = judge, boxes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.judge(x), self.boxes(x)[1]


def edge_deltas(box, plate) -> list[float]:
    """The box head's target: the plate's left, top, right and bottom edges from the box's, in units
    of the box's width and height, clipped to +-1 (the inverse of ``refined_boxes``)."""
    x1, y1, x2, y2 = box
    w, h = max(x2 - x1, 1e-3), max(y2 - y1, 1e-3)
    d = [(plate[0] - x1) / w, (plate[1] - y1) / h, (plate[2] - x2) / w, (plate[3] - y2) / h]
    return np.clip(d, -1.0, 1.0).tolist()


def nearest_plate(box, plates: np.ndarray) -> np.ndarray | None:
    """The labelled plate the box overlaps most, if at least ``REFINE_IOU``."""
    if not len(plates):
        return None
    ious = iou_matrix(np.asarray([box], np.float32), plates)[0]
    return plates[int(ious.argmax())] if ious.max() >= REFINE_IOU else None


def box_loss(x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor, gen: torch.Generator):
    """``fit``'s ``batch_loss`` for a :class:`BoxVerifier`: BCE on the labelled crops (label >= 0)
    plus smooth L1 on the edge deltas of the crops that have them (NaN: none). A mirrored crop's
    left and right deltas swap sides and sign."""

    def loss(model: nn.Module, idx: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
        flip = flips(len(idx), gen)
        xb = augment(x[idx].clone(), gen, flip)
        t = targets[idx]
        t = torch.where(flip[:, None], torch.stack([-t[:, 2], t[:, 1], -t[:, 0], t[:, 3]], 1), t)
        logit, delta = model(xb)
        yb = y[idx]
        known, has = yb >= 0, ~torch.isnan(t[:, 0])
        total = F.binary_cross_entropy_with_logits(logit.flatten()[known], yb[known], pos_weight=pos_weight)
        if has.any():
            total = total + BOX_LOSS_WEIGHT * F.smooth_l1_loss(delta[has], t[has], beta=0.05)
        return total

    return loss


def predict_boxes(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, edge deltas) of a :class:`BoxVerifier` on crops."""
    model.eval()
    probs, deltas = [], []
    with torch.no_grad():
        for i in range(0, len(x), 1024):
            logit, delta = model(x[i : i + 1024])
            probs.append(torch.sigmoid(logit).flatten())
            deltas.append(delta)
    return torch.cat(probs).numpy(), torch.cat(deltas).numpy()


def build(
    split: str, cache: Path, seed: int = 0, size: int = SIZE, context: float = CONTEXT, aspect: float = ASPECT
) -> dict[str, np.ndarray]:
    """Crops, labels, detector scores and record index of a split (cached as npz per audit, photos and geometry)."""
    audit_tag = hashlib.sha256(Path(AUDIT).read_bytes()).hexdigest()[:8] if Path(AUDIT).exists() else "none"
    records = load_proposals(split, cache)
    out = cache / f"crops_{split}_{len(records)}_{size}_{context}_{aspect}_{audit_tag}_edges.npz"
    if out.exists():
        return dict(np.load(out))
    rng = np.random.RandomState(seed)
    audit = audited()
    crops, labels, scores, rids, targets = [], [], [], [], []

    def add(image, box, label, score, rid, plate=None):
        """One crop; ``plate``: the labelled plate whose edges the box head learns from it."""
        crops.append(crop_with_context(image, box, size, context, aspect))
        labels.append(label)
        scores.append(score)
        rids.append(rid)
        targets.append(edge_deltas(box, plate) if plate is not None else [np.nan] * 4)

    for rid, rec in enumerate(records):
        image = imageio.decode(Path(rec["path"]).read_bytes()).pixels
        lab = label_proposals(rec, audit)
        plates = np.asarray(rec["plates"], np.float32).reshape(-1, 4)
        for box, score, label in zip(rec["boxes"], rec["scores"], lab, strict=True):
            if split == "val":  # every proposal as it comes: the operating point is chosen on these
                add(image, box, int(label), score, rid, nearest_plate(box, plates))
            elif label == 1:
                for _ in range(2):
                    moved = jitter(box, rng, 0.05)
                    add(image, moved, 1, score, rid, nearest_plate(moved, plates))
            elif label == 0:
                add(image, box, 0, score, rid)
            elif (plate := nearest_plate(box, plates)) is not None:  # unsure as a plate, still near one
                add(image, box, -1, score, rid, plate)
        if split == "train":
            for plate in plates:
                if plate[2] - plate[0] >= 6:
                    add(image, jitter(plate, rng, 0.08), 1, 1.0, rid, plate)
                    add(image, jitter(plate, rng, WIDE_JITTER), -1, 1.0, rid, plate)
            real = audit["plates"].get(key(rec["source"], rec["id"]), np.zeros((0, 4)))
            for plate in real.tolist():  # the audit's boxes are proposals: no edges to learn from
                if plate[2] - plate[0] >= 6:
                    add(image, jitter(plate, rng, 0.08), 1, 1.0, rid)
    data = {
        "crops": np.stack(crops),
        "labels": np.asarray(labels, np.int64),
        "scores": np.asarray(scores, np.float32),
        "rids": np.asarray(rids),
        "targets": np.asarray(targets, np.float32).reshape(-1, 4),
    }
    np.savez(out, **data)
    return data


@cache
def truths(source: str, ids: tuple[int, ...]) -> list:
    root = next(src.root for src in SOURCES if src.name == source)
    return load_coco(Path(root), ids)


def figures(records: list[dict], final: np.ndarray, threshold: float, floor: float = VAL_FLOOR) -> dict[str, dict]:
    """Per source and pooled: recall/precision@0.5 at ``threshold`` for final scores of every
    validation proposal (0: dropped), by ``anonymize eval``'s own ``evaluate``. A ``floor`` at the
    threshold gives the same recall and precision faster (greedy matching goes by score), not AP50."""
    rows, start = {}, 0
    by_source: dict[str, list] = {}
    for rec in records:
        k = len(rec["boxes"])
        s = final[start : start + k]
        start += k
        dets = [Detection("plate", float(v), tuple(b)) for b, v in zip(rec["boxes"], s, strict=True) if v >= floor]
        by_source.setdefault(rec["source"], []).append((rec["id"], dets))
    for src in SOURCES:
        if src.name not in by_source:
            continue
        found = dict(by_source[src.name])
        got = evaluate(
            truths(src.name, tuple(found)), lambda t, f=found: f[t.image_id], ["plate"], {"plate": threshold}
        )
        rows[src.name] = got["plate"]
    rows["all (pooled)"] = pooled(rows)
    return rows


def choose(records: list[dict], val: dict, probs: np.ndarray, base: dict[str, dict]) -> dict:
    """The point that maximises the detector threshold's own rule, min(recall / 0.95, precision /
    0.90) pooled, among those where no source's recall falls below the detector's alone (``base``);
    ties: the higher recall (privacy first).

    (Verifier 1 took the highest recall at no lower precision than the detector alone. With plate
    v6, whose own threshold already sits at a high precision, that rule kept the detector as it
    was and only raised precision; the shared rule trades the two the same way everywhere.)"""
    floor_recall = {name: r["recall@0.5"] for name, r in base.items()}
    best, grid = None, []
    for weight in WEIGHTS:
        for floor in FLOORS:
            if weight == 0 and floor == 0:
                continue  # the detector alone
            final = verified_scores(val["scores"], probs, weight, floor)
            for threshold in THRESHOLDS:
                rows = figures(records, final, float(threshold), float(threshold))
                p = rows["all (pooled)"]
                ok = all(rows[s]["recall@0.5"] >= floor_recall[s] for s in rows)
                row = {
                    "threshold": float(threshold),
                    "weight": weight,
                    "floor": floor,
                    "recall": p["recall@0.5"],
                    "precision": p["precision@0.5"],
                    "rule": round(min(p["recall@0.5"] / 0.95, p["precision@0.5"] / 0.90), 6),
                    "ok": ok,
                }
                grid.append(row)
                if ok and (best is None or (row["rule"], row["recall"]) > (best["rule"], best["recall"])):
                    best = row
    if best is not None:  # the full figures (AP50 too) at the chosen point
        final = verified_scores(val["scores"], probs, best["weight"], best["floor"])
        best = {**best, "rows": figures(records, final, best["threshold"])}
    print(f"chosen: { {k: v for k, v in (best or {}).items() if k != 'rows'} }", flush=True)
    return {"chosen": best, "grid": grid}


def train(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    geometry = {"size": args.size, "context": args.context, "aspect": args.aspect}
    val = build("val", args.cache, **geometry)
    xv = to_tensor(val["crops"])
    records = load_proposals("val", args.cache)
    model = BoxVerifier(args.width) if args.box_head else TinyVerifier(args.width)
    weights = args.cache / f"plate_verifier_{args.tag}.pt"
    if args.from_checkpoint:
        model.load_state_dict(torch.load(weights))
    else:
        data = build("train", args.cache, **geometry)
        keep = np.ones(len(data["labels"]), bool) if args.box_head else data["labels"] >= 0
        x, y = to_tensor(data["crops"][keep]), torch.from_numpy(data["labels"][keep]).float()
        targets = torch.from_numpy(data["targets"][keep])
        print(f"train: {int((y == 1).sum())} positives, {int((y == 0).sum())} negatives, "
              f"{int((~torch.isnan(targets[:, 0])).sum()) if args.box_head else 0} with plate edges; "
              f"val: {len(xv)} crops", flush=True)  # fmt: skip
        t0 = time.perf_counter()
        known = val["labels"] >= 0

        def report(epoch: int, loss: float) -> None:
            p, moved = verdicts(model, xv, records)
            acc = float(((p >= 0.5) == (val["labels"] == 1))[known].mean())
            print(f"epoch {epoch + 1}: loss {loss:.4f}, val accuracy on labelled "
                  f"proposals {acc:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
            if args.box_head:
                edge_report(records, moved)

        loss = box_loss(x, y, targets, gen) if args.box_head else None
        fit(model, x, y, epochs=args.epochs, batch=args.batch, lr=args.lr, gen=gen, report=report, batch_loss=loss)
        torch.save(model.state_dict(), weights)
    if args.judge:  # the verdicts of a trained verifier, the edges of the box network trained here
        judge = TinyVerifier(args.judge_width)
        judge.load_state_dict(torch.load(args.judge))
        model = JudgedBoxes(judge, model)
    probs, moved = verdicts(model, xv, records)
    base = figures(records, val["scores"], args.base_threshold)  # the detector alone, its own boxes
    point = choose(with_boxes(records, moved), val, probs, base)
    (args.cache / f"choice_{args.tag}.json").write_text(json.dumps({"base": base, **point}, indent=1))
    if args.dry_run:
        return
    outputs = ("logit", "box") if args.box_head else ("logit",)
    sha = export(model, args.out, crop_height(args.size, args.aspect), args.size, outputs)
    write_card(args.out, sha, base, point, args)


def verdicts(model: nn.Module, x: torch.Tensor, records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(probability, box as the product would keep it) of every validation proposal, in order."""
    boxes = np.asarray([b for rec in records for b in rec["boxes"]], np.float32).reshape(-1, 4)
    if not isinstance(model, BoxVerifier | JudgedBoxes):
        return predict(model, x), boxes
    probs, deltas = predict_boxes(model, x)
    return probs, refined_boxes(boxes, deltas)


def with_boxes(records: list[dict], boxes: np.ndarray) -> list[dict]:
    """The records with their proposals' boxes replaced, in order (refined boxes)."""
    out, start = [], 0
    for rec in records:
        k = len(rec["boxes"])
        out.append({**rec, "boxes": boxes[start : start + k].tolist()})
        start += k
    return out


def edge_report(records: list[dict], moved: np.ndarray) -> None:
    """How close the validation proposals near a labelled plate come to it, as proposed and refined:
    mean IoU and the share at IoU >= 0.5, for plates under 30 px wide and the rest."""
    rows: dict[str, list] = {"<30": [], ">=30": []}
    for rec, new in zip(records, with_boxes(records, moved), strict=True):
        plates = np.asarray(rec["plates"], np.float32).reshape(-1, 4)
        for box, box2 in zip(rec["boxes"], new["boxes"], strict=True):
            plate = nearest_plate(box, plates)
            if plate is not None:
                pair = iou_matrix(np.asarray([box, box2], np.float32), plate[None])[:, 0]
                rows["<30" if plate[2] - plate[0] < 30 else ">=30"].append(pair)
    for name, pairs in rows.items():
        a = np.asarray(pairs).reshape(-1, 2)
        print(f"  edges, plates {name} px ({len(a)} proposals near one): mean IoU {a[:, 0].mean():.3f} -> "
              f"{a[:, 1].mean():.3f}, IoU >= 0.5 {(a[:, 0] >= 0.5).mean():.3f} -> {(a[:, 1] >= 0.5).mean():.3f}",
              flush=True)  # fmt: skip


def write_card(model: Path, sha: str, base: dict, point: dict, args) -> None:
    """``<model>.json`` beside the model: what ``Verifier`` reads, and how the point was chosen."""
    chosen = point["chosen"] or {"threshold": None, "weight": 1.0, "floor": 0.0, "rows": {}}
    card = {
        "verifies": "plate",
        "file": model.name,
        "version": f"{model.stem}-1@{sha[:12]}",
        "sha256": sha,
        "threshold": chosen["floor"],
        "weight": chosen["weight"],
        "input_size": args.size,
        "context": args.context,
        "aspect": args.aspect,
        "refine": 1.0 if args.box_head else 0.0,
        "operating_threshold": chosen["threshold"],
        "chosen_on": "the mixed validation split of training/splits.json (743 photos, never trained on)",
        "rule": "max of min(recall@0.5 / 0.95, precision@0.5 / 0.90) pooled (the detector threshold's rule) where "
        f"no source's recall is below the detector's alone at {args.base_threshold}; ties: higher recall",
        "validation": {
            f"detector_alone_{args.base_threshold}": _brief(base),
            "chosen": _brief(chosen["rows"]) if chosen["rows"] else None,
        },
        "recipe": "python -m training.plate_verifier_data && python -m training.train_plate_verifier "
        f"--epochs {args.epochs} --width {args.width} --seed {args.seed} --base-threshold {args.base_threshold} "
        f"--size {args.size} --context {args.context} --aspect {args.aspect}"
        + (" --box-head" if args.box_head else "")
        + (f" --judge {args.judge} --judge-width {args.judge_width}" if args.judge else ""),
    }
    model.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")


def _brief(rows: dict) -> dict:
    return {
        name: {k: r[k] for k in ("recall@0.5", "precision@0.5", "detections", "recall@0.5_by_width")}
        for name, r in rows.items()
    }


def main() -> None:
    parser = verifier_arguments(__doc__.splitlines()[0], cache=CACHE, out=MODELS / "plate-verifier.onnx", epochs=8)
    parser.add_argument(
        "--base-threshold",
        type=float,
        default=BASE_THRESHOLD,
        help="the detector's own threshold without a verifier (its rule's choice): the figures to beat",
    )
    parser.add_argument("--size", type=int, default=SIZE, help="crop width, px")
    parser.add_argument("--context", type=float, default=CONTEXT, help="crop width / proposal width")
    parser.add_argument("--aspect", type=float, default=ASPECT, help="crop height / width")
    parser.add_argument("--box-head", action="store_true", help="a second head that refines each proposal's box")
    parser.add_argument(
        "--judge", type=Path, help="with --box-head: export this verifier's verdicts (a .pt) with the box"
    )
    parser.add_argument("--judge-width", type=int, default=48, help="the --judge network's width")
    parser.add_argument("--tag", default="shipped", help="names the cached weights and choice of a trial")
    parser.add_argument("--dry-run", action="store_true", help="train and choose only: no export, no card")
    train(parser.parse_args())


if __name__ == "__main__":
    main()
