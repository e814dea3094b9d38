"""Train the face verifier (a tiny CNN on a crop with context), export ONNX, write its card.

Recipe (the model card face-verifier.md has the figures):
- positives: the face detector's proposals that hit a labelled face (IoU >= 0.4) on the training
  half of ``faces/street-masks-dev``, and the labelled faces themselves, each with jittered boxes;
  plus the real people an audit found in the car photos (``training/car_faces.json``);
- negatives: the detector's proposals on the training part of the car photos (web-cars, dashcam,
  openimages-dev), less those audited real faces, and crops around labelled plates. Unmatched
  proposals on the street photos are NOT used: an audit showed most of those that score >= 0.15
  are real faces the labels miss;
- augmentation on the fly: flips, brightness/contrast, grey, blur, down-and-up scaling (small
  faces), noise;
- the operating point (detector threshold, verifier threshold) is chosen on the validation parts,
  never trained on: street-masks odd ids, held-out car photos (``face_verifier_data``).

    python -m training.face_verifier_data          # proposals, cached outside the repository
    python -m training.train_face_verifier         # crops, training (1 thread, minutes), export, card
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from anonymizer.verification import verified_scores
from anonymizer_local.evaluation import average_precision, match

from .face_verifier_data import (
    CACHE,
    CAR_FACES,
    CAR_SOURCES,
    PROPOSAL_FLOOR,
    audited,
    label_proposals,
    load_proposals,
    near,
)

MODELS = Path(__file__).resolve().parents[1] / "layers" / "anonymizer" / "anonymizer" / "models"
SIZE = 48  # network input, px
CONTEXT = 2.0  # crop side / proposal's longer side
FLOOR = PROPOSAL_FLOOR  # the lowest final score `anonymize eval` keeps


class TinyVerifier(nn.Module):
    """Four strided conv blocks and a linear head: ~60k parameters, well under 1 ms per crop."""

    def __init__(self, width: int = 24):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(chans, chans[1:], strict=False)):
            layers += [nn.Conv2d(a, b, 3, stride=1 if i == 3 else 2, padding=1, bias=False), nn.BatchNorm2d(b)]
            layers += [nn.ReLU(inplace=True), nn.Conv2d(b, b, 3, padding=1, groups=b, bias=False), nn.BatchNorm2d(b)]
            layers += [nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features the heads read."""
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        return self.features(x - mean).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _key(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[parts.index("data") + 1 :]).replace("/images/", "/")


def jitter(box, rng: np.random.RandomState, amount: float = 0.08) -> list[float]:
    """A box shifted and scaled a little, as the detector's boxes vary around a face."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    s = np.exp(rng.uniform(-1.5, 1.5) * amount)
    cx, cy = (x1 + x2) / 2 + rng.uniform(-1, 1) * amount * w, (y1 + y2) / 2 + rng.uniform(-1, 1) * amount * h
    return [cx - w * s / 2, cy - h * s / 2, cx + w * s / 2, cy + h * s / 2]


def build(split: str, cache: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Crops, labels, detector scores and sources of a split (cached as npz)."""
    from anonymizer.verification import crop_with_context

    audit = hashlib.sha256(CAR_FACES.read_bytes()).hexdigest()[:8] if CAR_FACES.exists() else "none"
    out = cache / f"crops_{split}_{SIZE}_{CONTEXT}_{audit}.npz"  # a new audit means new labels
    if out.exists():
        return dict(np.load(out))
    rng = np.random.RandomState(seed)
    real, unsure = audited("faces"), audited("unsure")
    crops, labels, scores, sources, ids = [], [], [], [], []
    images: dict[str, int] = {}

    def add(image, box, label, score, source, rid):
        crops.append(crop_with_context(image, box, SIZE, CONTEXT))
        labels.append(label)
        scores.append(score)
        sources.append(source)
        ids.append(rid)

    for source in ("street", *CAR_SOURCES):
        records = [r for r in load_proposals(source, cache) if r["split"] == split]
        images[source] = len(records)
        for rid, rec in enumerate(records):
            image = cv2.imread(rec["path"])
            boxes = np.asarray(rec["boxes"], np.float32).reshape(-1, 4)
            if source == "street":
                lab = label_proposals(rec)
                for box, score, label in zip(boxes, rec["scores"], lab, strict=True):
                    if split == "val":  # every proposal, as it comes: the operating point is chosen on these
                        add(image, box, int(label), score, source, rid)
                    elif label == 1:
                        for _ in range(3):
                            add(image, jitter(box, rng), 1, score, source, rid)
                if split == "train":
                    for face in rec["faces"]:
                        for _ in range(2):
                            add(image, jitter(face, rng, 0.12), 1, 1.0, source, rid)
                continue
            faces = real.get(_key(rec["path"]), np.zeros((0, 4), np.float32))
            is_face, doubt = near(boxes, faces), near(boxes, unsure.get(_key(rec["path"])))
            for box, score, face, unclear in zip(boxes, rec["scores"], is_face, doubt, strict=True):
                label = 1 if face else -1 if unclear else 0  # unsure: neither trained on nor counted
                if label >= 0 or split == "val":
                    add(image, box, label, score, source, rid)
            if split == "train":
                for face in faces:
                    for _ in range(3):
                        add(image, jitter(face, rng, 0.12), 1, 1.0, source, rid)
    data = {
        "crops": np.stack(crops),
        "labels": np.asarray(labels, np.int64),
        "scores": np.asarray(scores, np.float32),
        "sources": np.asarray(sources),
        "ids": np.asarray(ids),
        "image_sources": np.asarray(list(images)),
        "image_counts": np.asarray(list(images.values())),
    }
    np.savez(out, **data)
    return data


def augment(x: torch.Tensor, gen: torch.Generator, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Photometric and resolution jitter on a batch in 0..1 (NCHW), and mirror images: ``flip``
    (N bools, drawn by :func:`flips`) says which; None draws them here."""
    n = x.shape[0]

    def u(lo, hi, *shape):
        return torch.rand(*(shape or (n, 1, 1, 1)), generator=gen) * (hi - lo) + lo

    flip = flips(n, gen) if flip is None else flip
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    grey = (torch.rand(n, generator=gen) < 0.15).view(-1, 1, 1, 1)
    x = torch.where(grey, x.mean(1, keepdim=True).expand_as(x), x)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.6, 1.4) + mean * u(0.6, 1.4)
    small = torch.rand(n, generator=gen) < 0.4  # a small or soft object: down to 8-32 px wide and back up
    if small.any():
        side = int(torch.randint(8, 33, (1,), generator=gen))
        low = F.interpolate(x[small], size=(max(2, round(side * x.shape[2] / x.shape[3])), side), mode="area")
        x[small] = F.interpolate(low, size=x.shape[2:], mode="bilinear", align_corners=False)
    x = x + torch.randn(x.shape, generator=gen) * u(0, 0.04)
    return x.clamp(0, 1)


def flips(n: int, gen: torch.Generator) -> torch.Tensor:
    """Which of ``n`` crops :func:`augment` mirrors (half of them)."""
    return torch.rand(n, generator=gen) < 0.5


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(crops[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255.0


def predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([torch.sigmoid(model(x[i : i + 1024])).flatten() for i in range(0, len(x), 1024)]).numpy()


def street_figures(val: dict, scores: np.ndarray, cache: Path, threshold: float) -> dict:
    """recall@0.5 at ``threshold`` and AP50 on the street validation images, as ``anonymize eval``
    computes them, for final ``scores`` of every proposal (0: dropped)."""
    street = [r for r in load_proposals("street", cache) if r["split"] == "val"]
    sel = val["sources"] == "street"
    final, ids = scores[sel], val["ids"][sel]
    all_scores, hits, n_truth, start = [], [], 0, 0
    for rid, rec in enumerate(street):
        k = len(rec["boxes"])
        assert (ids[start : start + k] == rid).all()
        s = final[start : start + k]
        start += k
        keep = s >= FLOOR
        boxes = np.asarray(rec["boxes"], np.float32).reshape(-1, 4)[keep]
        gt = np.asarray(rec["faces"], np.float32).reshape(-1, 4)
        n_truth += len(gt)
        all_scores.append(s[keep])
        hits.append(match(gt, boxes, s[keep], 0.5))
    s, h = np.concatenate(all_scores), np.concatenate(hits)
    return {"recall@0.5": float(h[s >= threshold].sum() / n_truth), "AP50": average_precision(s, h, n_truth)}


def car_false(val: dict, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """False face boxes per held-out car photo, per source (audited real and unsure faces excluded)."""
    out = {}
    for source in CAR_SOURCES:
        sel = val["sources"] == source
        images = int(val["image_counts"][list(val["image_sources"]).index(source)])
        false = ((val["labels"][sel] == 0) & (scores[sel] >= threshold)).sum()
        out[source] = round(float(false / max(images, 1)), 4)
    return out


def choose(val: dict, probs: np.ndarray, cache: Path, base_threshold: float = 0.15) -> dict:
    """The operating point on the validation parts: among (threshold, weight, floor) that keep street
    recall@0.5 at least what the detector alone gets at ``base_threshold``, the one with the fewest
    false boxes per car photo (mean over the sources), then the higher AP50."""
    base = street_figures(val, val["scores"], cache, base_threshold)
    base["car_false"] = car_false(val, val["scores"], base_threshold)
    print(f"detector alone at {base_threshold}: {base}", flush=True)
    best = None
    for weight in (0.0, 0.5, 1.0):
        for floor in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
            if weight == 0 and floor == 0:
                continue
            final = verified_scores(val["scores"], probs, weight, floor)
            for threshold in (0.08, 0.1, 0.11, 0.12, 0.125, 0.13, 0.14, 0.15):
                f = street_figures(val, final, cache, threshold)
                cars = car_false(val, final, threshold)
                mean = float(np.mean(list(cars.values())))
                row = {"threshold": threshold, "weight": weight, "floor": floor, **f, "car_false": cars}
                row["car_false_mean"] = round(mean, 4)
                if f["recall@0.5"] >= base["recall@0.5"] and (
                    best is None or (mean, -f["AP50"]) < (best["car_false_mean"], -best["AP50"])
                ):
                    best = row
    print(f"chosen: {best}", flush=True)
    return {"base": base, "chosen": best}


def train(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    val = build("val", args.cache)
    train_set = build("train", args.cache) if not args.from_checkpoint else {k: val[k][:1] for k in val}
    x, y = to_tensor(train_set["crops"]), torch.from_numpy(train_set["labels"]).float()
    xv = to_tensor(val["crops"])
    print(f"train: {int(y.sum())} positives, {int((1 - y).sum())} negatives; val: {len(xv)} crops", flush=True)
    model = TinyVerifier(args.width)
    if args.init:  # continue from earlier weights (e.g. a first model trained before the audit was done)
        model.load_state_dict(torch.load(args.init))
    if args.from_checkpoint:  # the operating point and the export again, without training
        model.load_state_dict(torch.load(args.cache / "face_verifier.pt"))
        args.epochs = 0
    t0 = time.perf_counter()

    def report(epoch: int, loss: float) -> None:
        final = verified_scores(val["scores"], predict(model, xv), 0.5, 0.0)
        f = street_figures(val, final, args.cache, 0.12)
        print(f"epoch {epoch + 1}: loss {loss:.4f}, street R {f['recall@0.5']:.4f} "
              f"AP50 {f['AP50']:.4f}, car false/img {car_false(val, final, 0.12)} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip

    fit(model, x, y, epochs=args.epochs, batch=args.batch, lr=args.lr, gen=gen, report=report)
    if not args.from_checkpoint:
        torch.save(model.state_dict(), args.cache / "face_verifier.pt")
    probs = predict(model, xv)
    np.save(args.cache / "val_probs.npy", probs)
    sha = export(model, args.out)
    point = choose(val, probs, args.cache)
    write_card(args.out, sha, point, args)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch: int,
    lr: float,
    gen: torch.Generator,
    report: Callable[[int, float], None],
    batch_loss: Callable[..., torch.Tensor] | None = None,
) -> None:
    """The verifiers' training loop (faces and plates): AdamW with a one-cycle LR, BCE weighted so
    both classes count alike, augmentation per batch; ``report(epoch, mean loss)`` after each epoch.
    ``batch_loss(model, idx, pos_weight)``: another loss per batch of indices (the plate verifier's
    box head)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * (len(x) // batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    labelled = y >= 0
    pos_weight = (1 - y[labelled]).sum() / y[labelled].sum()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for b in range(len(x) // batch):
            idx = order[b * batch : (b + 1) * batch]
            if batch_loss is not None:
                loss = batch_loss(model, idx, pos_weight)
            else:
                logits = model(augment(x[idx].clone(), gen)).flatten()
                loss = F.binary_cross_entropy_with_logits(logits, y[idx], pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        report(epoch, total / max(1, len(x) // batch))


def write_card(model: Path, sha: str, point: dict, args) -> None:
    """``<model>.json`` beside the model: what ``Verifier`` reads, and how the point was chosen."""
    chosen = point["chosen"]
    card = {
        "verifies": "face",
        "file": model.name,
        "version": f"{model.stem}-1@{sha[:12]}",
        "sha256": sha,
        "threshold": chosen["floor"],
        "weight": chosen["weight"],
        "input_size": SIZE,
        "context": CONTEXT,
        "operating_threshold": chosen["threshold"],
        "chosen_on": "validation parts never trained on: street-masks-dev odd ids, held-out car photos",
        "validation": {"detector_alone": point["base"], "chosen": chosen},
        "recipe": "python -m training.face_verifier_data && python -m training.train_face_verifier "
        f"--epochs {args.epochs} --width {args.width} --seed {args.seed}"
        + (f" --init {args.init.name}" if args.init else ""),
    }
    model.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")


def export(model: nn.Module, out: Path, height: int = SIZE, width: int = SIZE, outputs: tuple = ("logit",)) -> str:
    """ONNX (opset 13, dynamic batch): input ``input`` N x 3 x height x width RGB 0..1, output ``logit``
    (and ``box`` for a verifier with a box head)."""
    model.eval()
    torch.onnx.export(
        model,
        torch.zeros(1, 3, height, width),
        str(out),
        input_names=["input"],
        output_names=list(outputs),
        dynamic_axes={"input": {0: "n"}, **{name: {0: "n"} for name in outputs}},
        opset_version=13,
        dynamo=False,
    )
    return hashlib.sha256(out.read_bytes()).hexdigest()


def verifier_arguments(description: str, *, cache: Path, out: Path, epochs: int) -> argparse.ArgumentParser:
    """The options every verifier's training takes (the face and the plate one)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cache", type=Path, default=cache)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-checkpoint", action="store_true", help="no training: export the cached weights")
    return parser


def main() -> None:
    parser = verifier_arguments(__doc__.splitlines()[0], cache=CACHE, out=MODELS / "face-verifier.onnx", epochs=12)
    parser.add_argument("--init", type=Path, help="start from these weights (a state_dict)")
    train(parser.parse_args())


if __name__ == "__main__":
    main()
