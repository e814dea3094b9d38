"""Evaluate the plate detector (int8 ONNX) on the held-out images.

    python -m training.eval_plates [--model layers/anonymizer/anonymizer/models/plate-int8.onnx]
        [--threshold T (default: plate.json)] [--threads 1] [--min-long 416] [--speed]

Decoder and scoring: the engine's own (anonymizer.detection.decode + nms at IoU 0.4,
anonymizer_local.evaluation.match + average_precision), so these figures equal `anonymize eval`.
Working resolution: upscale so the long side is >= 416 (plates_data.MIN_LONG_SIDE), pad to
multiples of 32; dashcam 1280x720 runs as is.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import cv2
import numpy as np

from anonymizer.detection import decode as decode_peaks
from anonymizer.detection import nms
from anonymizer_local.evaluation import average_precision
from anonymizer_local.evaluation import match as hit_flags
from training import plates_data as D

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MODEL = os.path.join(REPO, "layers/anonymizer/anonymizer/models/plate-int8.onnx")


def session(path, threads=1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def decode(heatmap, scale, offset, threshold, nms_iou=0.4):
    """The engine's decoder (anonymizer.detection) on one image's raw outputs: boxes and scores."""
    boxes, scores = decode_peaks(heatmap[0, 0], scale[0], offset[0], threshold)
    keep = nms(boxes, scores, nms_iou)
    return boxes[keep], scores[keep]


def detect(sess, bgr, threshold, min_long=D.MIN_LONG_SIDE):
    x, f = D.working_image(bgr, min_long)
    hm, sc, off = sess.run(["heatmap", "scale", "offset"], {"input": x})
    boxes, scores = decode(hm, sc, off, threshold)
    boxes /= f
    h, w = bgr.shape[:2]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes, scores


def match(dets, gts, iou_thr):
    """Greedy matching by score over images (anonymizer_local.evaluation.match per image).
    Returns (tp flags sorted by score, scores sorted, n_gt)."""
    hits = [hit_flags(gt, boxes, scores, iou_thr) for (boxes, scores), gt in zip(dets, gts, strict=True)]
    scores = np.concatenate([s for _, s in dets]) if dets else np.zeros(0)
    tp = np.concatenate(hits) if hits else np.zeros(0, bool)
    order = np.argsort(-scores, kind="stable")
    return tp[order], scores[order], sum(len(gt) for gt in gts)


def ap_from(tp, n_gt):
    if n_gt == 0 or len(tp) == 0:
        return 0.0
    return average_precision(-np.arange(len(tp), dtype=np.float64), tp, n_gt)  # tp is already score-sorted


def run_all(sess, items, low=0.05, min_long=D.MIN_LONG_SIDE):
    dets = [detect(sess, cv2.imread(it.path, cv2.IMREAD_COLOR), low, min_long) for it in items]
    return dets, [it.boxes for it in items]


def metrics_at(dets, gts, thr):
    out = {}
    d = [(b[s > thr], s[s > thr]) for b, s in dets]
    for iou_thr, key in ((0.5, "recall50"), (0.3, "recall30")):
        tp, _, n_gt = match(d, gts, iou_thr)
        out[key] = float(tp.sum() / max(n_gt, 1))
        if iou_thr == 0.5:
            out["precision"] = float(tp.sum() / max(len(tp), 1))
            out["tp"], out["fp"], out["plates"] = int(tp.sum()), int(len(tp) - tp.sum()), int(n_gt)
    tp, _, n_gt = match(dets, gts, 0.5)
    out["ap50"] = ap_from(tp, n_gt)
    out["images"] = len(gts)
    out["threshold"] = float(thr)
    return out


def evaluate_model(model, items, thr, threads=1, min_long=D.MIN_LONG_SIDE):
    dets, gts = run_all(session(model, threads), items, min(0.05, thr), min_long)
    return metrics_at(dets, gts, thr)


def choose_threshold(
    model, items, threads=1, min_long=D.MIN_LONG_SIDE, recall_target=0.95, precision_target=0.90, verbose=False
):
    """Threshold on `items` (training side, never the held-out sets) maximising
    min(recall@0.5 / recall_target, precision / precision_target); ties go to the lower threshold."""
    dets, gts = run_all(session(model, threads), items, 0.05, min_long)
    grid = np.round(np.arange(0.05, 0.951, 0.025), 3)
    ms = [metrics_at(dets, gts, t) for t in grid]
    if verbose:
        for m in ms:
            print(f"  thr {m['threshold']:.3f} recall {m['recall50']:.3f} precision {m['precision']:.3f}")

    def score(m):
        return min(m["recall50"] / recall_target, m["precision"] / precision_target)

    best = max(ms, key=lambda m: (round(score(m), 6), -m["threshold"]))
    info = (
        f"max of min(recall/{recall_target}, precision/{precision_target}) on {len(items)} "
        f"threshold-choice images: recall {best['recall50']:.3f} precision {best['precision']:.3f}"
    )
    return best["threshold"], info


def speed(model, threads, n=5):
    sess = session(model, threads)
    rng = np.random.RandomState(0)
    img = rng.randint(0, 255, (1080, 1920, 3), np.uint8)
    detect(sess, img, 0.5)
    t = time.perf_counter()
    for _ in range(n):
        detect(sess, img, 0.5)
    return (time.perf_counter() - t) / n * 1000


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-long", type=int, default=D.MIN_LONG_SIDE)
    ap.add_argument("--choose", action="store_true", help="re-choose the threshold on the mixed validation set")
    ap.add_argument("--speed", action="store_true", help="ms per 1080p image, 1 and 2 threads")
    ap.add_argument("--sets", default=",".join(f"val/{s.name}" for s in D.SOURCES))
    ap.add_argument("--write-meta", action="store_true", help="store threshold/policy/results in plate.json")
    ap.add_argument("--checkpoint", help="evaluate a training checkpoint (.pt, exported to fp32 ONNX first)")
    args = ap.parse_args(argv)
    if args.checkpoint:
        import tempfile

        import torch

        from training.centerface_torch import CenterFaceNet, export_onnx

        torch.set_num_threads(args.threads)
        net = CenterFaceNet(landmarks=False)
        net.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
        args.model = os.path.join(tempfile.mkdtemp(), "checkpoint-fp32.onnx")
        export_onnx(net, args.model)
    parts = D.load_parts()
    thr = args.threshold
    if args.choose:
        thr, info = choose_threshold(
            args.model,
            parts["val"],
            args.threads,
            min_long=args.min_long,
            verbose=True,
        )
        print(f"chosen threshold {thr} ({info})")
    if thr is None:
        meta = os.path.join(os.path.dirname(args.model), "plate.json")
        thr = 0.5
        if os.path.exists(meta):
            with open(meta) as f:
                thr = json.load(f)["threshold"]
    results = {}
    for name in [n for n in args.sets.split(",") if n in parts]:
        m = evaluate_model(args.model, parts[name], thr, args.threads, args.min_long)
        print(
            f"{name:16s} images {m['images']:3d} plates {m['plates']:3d}  recall@0.5 {m['recall50']:.3f}  "
            f"recall@0.3 {m['recall30']:.3f}  precision {m['precision']:.3f}  AP50 {m['ap50']:.3f}  "
            f"(tp {m['tp']} fp {m['fp']}, threshold {thr})"
        )
        results[name] = m
    if args.write_meta:  # refresh plate.json after a change of threshold / input policy
        meta_path = os.path.join(os.path.dirname(args.model), "plate.json")
        with open(meta_path) as f:
            meta = json.load(f)
        meta["threshold"] = float(thr)
        meta["input_policy"]["min_long_side"] = args.min_long
        meta["validation"] = results
        if args.choose:
            meta["threshold_choice"] = info
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
    if args.speed:
        for t in (1, 2):
            print(f"1080p int8, {t} thread(s): {speed(args.model, t):.0f} ms/image")


if __name__ == "__main__":
    main()
