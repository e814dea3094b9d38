"""Evaluate the plate detector (int8 ONNX) on the held-out images.

    python -m training.eval_plates [--model layers/anonymizer/anonymizer/models/plate-int8.onnx]
        [--threshold T (default: plate.json)] [--threads 1] [--min-long 640] [--speed]

Decoder: 3x3 max-pool peaks of the heatmap above the threshold, box = exp(scale)*4 centred at
(cell + offset + 0.5)*4, NMS IoU 0.4. Working resolution: upscale so the long side is >= 640
(plate.json input_policy), pad to multiples of 32; dashcam 1280x720 runs as is.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import cv2
import numpy as np

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


def nms(boxes, scores, iou=0.4):
    order = np.argsort(-scores)
    keep = []
    while len(order):
        i = order[0]
        keep.append(i)
        if len(order) == 1:
            break
        r = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[r, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[r, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[r, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[r, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        a = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        o = inter / (a[i] + a[r] - inter + 1e-9)
        order = r[o < iou]
    return np.array(keep, np.int64)


def decode(heatmap, scale, offset, threshold, nms_iou=0.4, stride=4):
    hm = heatmap[0, 0]
    p = np.pad(hm, 1, constant_values=-1)
    h, w = hm.shape
    mx = np.max(np.stack([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]), 0)
    ys, xs = np.where((hm >= mx) & (hm > threshold))
    if len(ys) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    bh = np.exp(scale[0, 0, ys, xs]) * stride
    bw = np.exp(scale[0, 1, ys, xs]) * stride
    cy = (ys + offset[0, 0, ys, xs] + 0.5) * stride
    cx = (xs + offset[0, 1, ys, xs] + 0.5) * stride
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).astype(np.float32)
    scores = hm[ys, xs].astype(np.float32)
    k = nms(boxes, scores, nms_iou)
    return boxes[k], scores[k]


def detect(sess, bgr, threshold, min_long=D.MIN_LONG_SIDE):
    x, f = D.working_image(bgr, min_long)
    hm, sc, off = sess.run(["heatmap", "scale", "offset"], {"input": x})
    boxes, scores = decode(hm, sc, off, threshold)
    boxes /= f
    h, w = bgr.shape[:2]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes, scores


def iou_matrix(a, b):
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    xx1 = np.maximum(a[:, None, 0], b[None, :, 0])
    yy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    xx2 = np.minimum(a[:, None, 2], b[None, :, 2])
    yy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
    aa = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    bb = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (aa[:, None] + bb[None, :] - inter + 1e-9)


def match(dets, gts, iou_thr):
    """Greedy matching by score. dets: per image (boxes, scores).
    Returns (tp flags sorted by score, scores, n_gt)."""
    recs = []
    n_gt = 0
    for (boxes, scores), gt in zip(dets, gts, strict=True):
        n_gt += len(gt)
        used = np.zeros(len(gt), bool)
        ious = iou_matrix(boxes, gt)
        for i in np.argsort(-scores):
            tp = False
            if len(gt):
                cand = np.where(~used & (ious[i] >= iou_thr))[0]
                if len(cand):
                    j = cand[np.argmax(ious[i, cand])]
                    used[j] = True
                    tp = True
            recs.append((scores[i], tp))
    recs.sort(key=lambda r: -r[0])
    return np.array([r[1] for r in recs], bool), np.array([r[0] for r in recs]), n_gt


def ap_from(tp, n_gt):
    if n_gt == 0 or len(tp) == 0:
        return 0.0
    ctp = np.cumsum(tp)
    rec = ctp / n_gt
    prec = ctp / np.arange(1, len(tp) + 1)
    mrec = np.concatenate([[0], rec, [1]])
    mpre = np.concatenate([[1], prec, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


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
    ap.add_argument("--choose", action="store_true", help="re-choose the threshold on the threshold-choice images")
    ap.add_argument("--speed", action="store_true", help="ms per 1080p image, 1 and 2 threads")
    ap.add_argument("--sets", default="holdout_dashcam,holdout_web")
    ap.add_argument("--write-meta", action="store_true", help="store threshold/policy/results in plate.json")
    ap.add_argument("--checkpoint", help="evaluate a training checkpoint (.pt, exported to fp32 ONNX first)")
    args = ap.parse_args(argv)
    if args.checkpoint:
        import tempfile

        import torch

        from training.centerface_torch import CenterFaceNet
        from training.train_plates import export_onnx

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
            parts["thresh_dashcam"] + parts["thresh_web"],
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
    for name in args.sets.split(","):
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
        meta["heldout"] = results
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
