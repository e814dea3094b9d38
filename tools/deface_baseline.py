#!/usr/bin/env python3
"""deface (ORB-HD, CenterFace) as a baseline: accuracy and whole-process throughput, ours vs theirs.

deface lives in its OWN virtualenv (.venv-deface, git-ignored): it is a yardstick, never a
dependency of ours. Run this script with our venv's python (it needs ``anonymizer``):

    python tools/deface_baseline.py setup        # .venv-deface with deface==1.5.0 (+ onnx, onnxruntime: CPU)
    python tools/deface_baseline.py accuracy     # street-masks-dev: ours vs deface, full / even ids / odd ids
    python tools/deface_baseline.py throughput   # 24 generated 1080p JPEGs, whole processes, best of 2 runs

How deface is measured, and why so:

* ``pip install deface`` alone runs CenterFace on OpenCV's DNN module. Its README recommends
  ``pip install onnx onnxruntime`` to enable the ONNX Runtime backend (``--backend auto`` then
  picks it). We install the CPU ``onnxruntime`` package, so the baseline is deface at its best on
  a CPU; ``throughput`` also times ``--backend opencv`` (what a plain install runs).
* Accuracy mirrors deface's CLI exactly (deface/deface.py ``image_detect``): ``imageio.v2.imread``
  (RGB), ``CenterFace(in_shape=None, backend='auto')`` (native resolution, no ``--scale``) and its
  own decode + NMS (0.3). It is called with threshold 0.01 so AP50 sees the whole curve; the
  operating point is deface's default ``--thresh 0.2`` (it keeps scores ``> 0.2``). Greedy NMS
  keeps the same boxes above 0.2 whatever lower-scored candidates exist, so filtering the 0.01
  run at 0.2 is exactly what the CLI returns.
* deface's ``--output`` is ONE output file name; with several inputs it writes each input's
  ``NAME_anonymized.EXT`` next to it. Throughput therefore copies the inputs into a fresh folder
  per run (not timed) and runs ``deface FILE...`` there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFACE_VENV = ROOT / ".venv-deface"
DEFACE_PY = DEFACE_VENV / "bin" / "python"
DEFACE_BIN = DEFACE_VENV / "bin" / "deface"
DEFACE_VERSION = "1.5.0"
DATA = Path(os.environ.get("ANONYMIZER_DATA", ROOT.parent / "shared" / "data"))
FACES = DATA / "faces" / "street-masks-dev"
BUILD = ROOT / "build"
BENCH_1080P = BUILD / "bench-1080p"
DEFACE_THRESHOLD = 0.2  # deface CLI default (--thresh)
DEFACE_OPERATING = math.nextafter(DEFACE_THRESHOLD, 1.0)  # deface keeps heatmap > thresh; evaluate() uses >=
LOW_SCORE = 0.01


def _our_bin(name: str) -> Path:
    return Path(sys.executable).parent / name


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def provenance() -> dict:
    """What was measured: the commit, uncommitted changes and the model cards in use."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return proc.stdout.rstrip("\n")

    models = ROOT / "layers" / "anonymizer" / "anonymizer" / "models"
    cards = {}
    for label in ("face", "plate"):
        card = models / f"{label}.json"
        if card.exists():
            data = json.loads(card.read_text())
            cards[label] = {
                k: data.get(k)
                for k in ("version", "threshold", "min_side", "max_side", "min_object", "min_detectable", "tile_side")
            }
    return {
        "git_head": git("rev-parse", "--short", "HEAD"),
        "modified": [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()],
        "model_cards": cards,
    }


# --- setup -------------------------------------------------------------------------------------


_CHECK_INSTALLED = f"""
import importlib.metadata as m, sys
sys.exit(0 if m.version("deface") == "{DEFACE_VERSION}" and m.version("onnxruntime") and m.version("onnx") else 1)
"""


def cmd_setup(args: argparse.Namespace) -> int:
    if not DEFACE_PY.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(DEFACE_VENV)], check=True)
    if subprocess.run([str(DEFACE_PY), "-c", _CHECK_INSTALLED], capture_output=True).returncode != 0:
        pip = [str(DEFACE_PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        # onnx + onnxruntime (CPU build) enable deface's ONNX Runtime backend, as its README recommends.
        subprocess.run(pip + [f"deface=={DEFACE_VERSION}", "onnx", "onnxruntime"], check=True)
    check = (
        "import deface, onnxruntime, cv2, numpy;"
        "from deface.centerface import CenterFace;"
        "c = CenterFace(in_shape=None, backend='auto');"
        "print('deface', deface.__version__, 'backend', c.backend, 'onnxruntime', onnxruntime.__version__,"
        " 'providers', c.sess.get_providers(), 'opencv', cv2.__version__)"
    )
    out = subprocess.run([str(DEFACE_PY), "-c", check], check=True, capture_output=True, text=True).stdout
    print(out.strip())
    if "CPUExecutionProvider" not in out or "CUDA" in out:
        print("deface does not run on onnxruntime's CPU provider; check the venv", file=sys.stderr)
        return 1
    return 0


def require_deface() -> None:
    if not DEFACE_BIN.exists():
        sys.exit(f"{DEFACE_VENV} is missing: run `python tools/deface_baseline.py setup` first")


# --- accuracy ----------------------------------------------------------------------------------

# Runs inside .venv-deface: deface's CLI path for one image, minus the drawing and saving.
# deface's NMS is a pure-Python double loop: at threshold 0.01 (thousands of candidates per image)
# it takes seconds per image. It is replaced by a vectorised copy with the same greedy order, the
# same float32 arithmetic and the same ">= 0.3" rule; the first CHECK images run both and must agree.
_DEFACE_DETECT = r"""
import json, sys, time
import numpy as np
import imageio.v2 as iio
from deface.centerface import CenterFace

threshold, check = float(sys.argv[1]), int(sys.argv[2])
original_nms = CenterFace.nms
calls = {"n": 0, "checked": 0}

def nms(boxes, scores, nms_thresh):
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(scores)[::-1]
    suppressed = np.zeros(len(boxes), bool)
    for k in range(len(order)):
        i = order[k]
        if suppressed[i]:
            continue
        rest = order[k + 1:]
        rest = rest[~suppressed[rest]]
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            ovr = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[ovr >= nms_thresh]] = True
    keep = np.nonzero(~suppressed)[0]
    calls["n"] += 1
    if calls["n"] <= check:
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = original_nms(boxes, scores, nms_thresh)
        if not np.array_equal(keep, expected):
            sys.exit(f"vectorised NMS differs from deface's on call {calls['n']}")
        calls["checked"] += 1
    return keep

CenterFace.nms = staticmethod(nms)
centerface = CenterFace(in_shape=None, backend="auto")  # as deface.main() with its defaults
for line in sys.stdin:
    path = line.strip()
    if not path:
        continue
    t0 = time.perf_counter()
    frame = iio.imread(path)  # as deface.image_detect()
    dets, _ = centerface(frame, threshold=threshold)
    ms = (time.perf_counter() - t0) * 1000
    print(json.dumps({"image": path, "ms": round(ms, 1),
                      "detections": [[float(v) for v in d[:5]] for d in dets]}), flush=True)
print(json.dumps({"nms_checked": calls["checked"], "providers": centerface.sess.get_providers()}), flush=True)
"""


def deface_detections(paths: list[Path], threshold: float, check: int = 3) -> tuple[dict[str, dict], dict]:
    proc = subprocess.run(
        [str(DEFACE_PY), "-c", _DEFACE_DETECT, str(threshold), str(check)],
        input="".join(f"{p}\n" for p in paths),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"deface detection failed ({proc.returncode}): {proc.stderr[-2000:]}")
    lines = [json.loads(s) for s in proc.stdout.splitlines() if s.startswith("{")]
    return {Path(d["image"]).name: d for d in lines if "image" in d}, lines[-1]


def our_detections(folder: Path, min_score: float) -> dict[str, dict]:
    proc = subprocess.run(
        [str(_our_bin("anonymize")), "detect", str(folder), "--jsonl", "--targets", "face"]
        + ["--min-score", str(min_score)],
        capture_output=True,
        text=True,
    )
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"anonymize detect failed ({proc.returncode}): {proc.stderr[-2000:]}")
    lines = [json.loads(s) for s in proc.stdout.splitlines() if s.startswith("{")]
    return {Path(d["image"]).name: d for d in lines}


def score_table(truths, ours: dict, theirs: dict, our_thr: float) -> dict:
    from anonymizer.detection import Detection
    from anonymizer_local.evaluation import evaluate

    def ours_for(truth):
        d = ours.get(truth.path.name, {})
        return [Detection("face", x["score"], tuple(x["box"])) for x in d.get("detections", []) if x["label"] == "face"]

    def theirs_for(truth):
        d = theirs.get(truth.path.name, {})
        return [Detection("face", x[4], tuple(x[:4])) for x in d.get("detections", [])]

    splits = {
        "full": truths,
        "even ids (tuning)": [t for t in truths if t.image_id % 2 == 0],
        "odd ids (held out)": [t for t in truths if t.image_id % 2 == 1],
    }
    results = {}
    for split, subset in splits.items():
        results[split] = {
            "ours": evaluate(subset, ours_for, ["face"], {"face": our_thr})["face"],
            "deface": evaluate(subset, theirs_for, ["face"], {"face": DEFACE_OPERATING})["face"],
        }
        results[split]["deface"]["threshold"] = DEFACE_THRESHOLD
    return results


def print_accuracy(results: dict) -> None:
    head = f"{'split':<19} {'detector':<8} {'images':>6} {'faces':>5} {'thr':>5} "
    head += f"{'R@0.5':>6} {'R@0.3':>6} {'P@0.5':>6} {'AP50':>6}"
    print(head)
    print("-" * len(head))
    for split, pair in results.items():
        for name, r in pair.items():
            print(
                f"{split:<19} {name:<8} {r['images']:>6} {r['objects']:>5} {r['threshold']:>5.2f} "
                f"{r['recall@0.5']:>6.3f} {r['recall@0.3']:>6.3f} {r['precision@0.5']:>6.3f} {r['AP50']:>6.3f}"
            )


def cmd_accuracy(args: argparse.Namespace) -> int:
    require_deface()
    from anonymizer.detection import ModelCard
    from anonymizer_local.evaluation import load_coco

    folder = Path(args.data)
    truths = load_coco(folder)
    our_thr = ModelCard.load("face").threshold
    record = {
        "command": "accuracy",
        "date": stamp(),
        "dataset": str(folder),
        "load_before": load(),
        "provenance": provenance(),
    }
    t0 = time.perf_counter()
    theirs, info = deface_detections([t.path for t in truths], LOW_SCORE)
    record["deface_run"] = info
    record["deface_seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    ours = our_detections(folder / "images", LOW_SCORE)
    record["ours_seconds"] = round(time.perf_counter() - t0, 1)
    missing = [t.path.name for t in truths if t.path.name not in ours or t.path.name not in theirs]
    if missing:
        print(f"warning: no detections line for {len(missing)} image(s), e.g. {missing[:3]}", file=sys.stderr)
    errors = [d for d in ours.values() if "error" in d]
    if errors:
        print(f"warning: ours failed on {len(errors)} image(s), e.g. {errors[:2]}", file=sys.stderr)
    record["load_after"] = load()
    record["results"] = score_table(truths, ours, theirs, our_thr)
    record["settings"] = {
        "ours": f"anonymize detect --jsonl --targets face --min-score {LOW_SCORE}; operating threshold {our_thr} "
        "(models/face.json)",
        "deface": f"deface {DEFACE_VERSION} CenterFace(in_shape=None, backend='auto') on imageio.v2.imread, "
        f"threshold {LOW_SCORE}; operating threshold {DEFACE_THRESHOLD} (CLI default)",
    }
    print(f"{folder} ({len(truths)} images) — {record['date']}, load {record['load_before']} -> {record['load_after']}")
    print(f"detect time (whole runs, threshold {LOW_SCORE}): ours {record['ours_seconds']} s, ", end="")
    print(f"deface {record['deface_seconds']} s (its NMS vectorised, see the module docstring)")
    print_accuracy(record["results"])
    _write_json(record, args.out or BUILD / f"deface-accuracy-{_file_stamp()}.json")
    return 0


# --- throughput --------------------------------------------------------------------------------


def ensure_1080p(n: int, folder: Path = BENCH_1080P) -> list[Path]:
    """``n`` 1920x1080 JPEGs (quality 90) made from real photos: see bench_images.generate_images."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_images

    return bench_images.generate_images("1080p", n, folder)


def time_process(cmd: list[str], cwd: Path | None = None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}... exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {"seconds": round(seconds, 3), "stderr_tail": proc.stderr[-300:]}


def run_deface_cli(images: list[Path], workdir: Path, extra: list[str] = ()) -> dict:
    """Whole ``deface FILE...`` process over copies of ``images`` in ``workdir`` (copying not timed)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    copies = []
    for src in images:
        dst = workdir / src.name
        shutil.copyfile(src, dst)
        copies.append(dst.name)
    result = time_process([str(DEFACE_BIN), *copies, *extra], cwd=workdir)
    outputs = sorted(workdir.glob("*_anonymized.*"))
    if len(outputs) != len(images):
        raise RuntimeError(f"deface wrote {len(outputs)} of {len(images)} outputs in {workdir}")
    result["output_bytes"] = sum(p.stat().st_size for p in outputs)
    return result


def run_ours_cli(images: list[Path], outdir: Path, targets: str, settings: tuple[str, ...] = ()) -> dict:
    """Whole ``anonymize FILE... -o OUTDIR --targets ... [--set K=V]`` process (the files of one folder)."""
    if outdir.exists():
        shutil.rmtree(outdir)
    extra = [f"--set={kv}" for kv in settings]
    result = time_process(
        [str(_our_bin("anonymize")), *map(str, images), "-o", str(outdir), "--targets", targets, *extra]
    )
    result["output_bytes"] = sum(p.stat().st_size for p in outdir.rglob("*") if p.is_file())
    return result


def plate_model_available() -> tuple[bool, str]:
    from anonymizer.pipeline import Anonymizer

    try:
        Anonymizer().detector("plate")
        return True, "available"
    except Exception as exc:  # DetectionError (missing file / card) or a broken card
        return False, f"plate model not available ({exc})"


def throughput_runs(images: list[Path], repeats: int = 2, opencv: bool = True, settings: tuple[str, ...] = ()) -> dict:
    """Whole processes, best of ``repeats``: deface (onnxrt; and opencv), ours faces, ours faces+plates."""
    scratch = BUILD / "bench-out"
    plate_ok, plate_note = plate_model_available()
    contenders = {
        "deface (onnxruntime CPU)": lambda i: run_deface_cli(images, scratch / f"deface-{i}"),
        "ours --targets face": lambda i: run_ours_cli(images, scratch / f"ours-face-{i}", "face"),
    }
    if opencv:
        contenders["deface --backend opencv"] = lambda i: run_deface_cli(
            images, scratch / f"deface-cv-{i}", ["--backend", "opencv"]
        )
    if plate_ok:
        contenders["ours --targets face,plate"] = lambda i: run_ours_cli(
            images, scratch / f"ours-both-{i}", "face,plate"
        )
    if plate_ok and settings:
        contenders["ours --targets face,plate " + " ".join(f"--set {kv}" for kv in settings)] = lambda i: run_ours_cli(
            images, scratch / f"ours-set-{i}", "face,plate", settings
        )
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for i in range(repeats):  # interleaved, so a load spike hits every contender alike
        for name, fn in contenders.items():
            before = load()
            r = fn(i)
            r["load_before"], r["load_after"] = before, load()
            r["images_per_s"] = round(len(images) / r["seconds"], 3)
            runs[name].append(r)
    best = {name: max(r["images_per_s"] for r in rs) for name, rs in runs.items()}
    ratio = {  # ours / deface, for every pair
        f"{ours} / {theirs}": round(best[ours] / best[theirs], 2)
        for ours in best
        if ours.startswith("ours")
        for theirs in best
        if theirs.startswith("deface")
    }
    return {
        "images": len(images),
        "runs": runs,
        "best_images_per_s": best,
        "ratio_vs_deface": ratio,
        "plate": plate_note,
    }


def print_throughput(t: dict) -> None:
    runs = max(len(rs) for rs in t["runs"].values())
    cols = " ".join(f"{f'run {i + 1} img/s':>11}" for i in range(runs))
    print(f"{'contender':<28} {cols} {'best':>7}  load (1-min) before each run")
    for name, rs in t["runs"].items():
        cells = " ".join(f"{r['images_per_s']:>11.2f}" for r in rs)
        loads = ", ".join(f"{r['load_before'][0]:.2f}" for r in rs)
        print(f"{name:<28} {cells} {t['best_images_per_s'][name]:>7.2f}  {loads}")
    for pair, ratio in t["ratio_vs_deface"].items():
        print(f"ratio {pair} = {ratio:.2f}x")
    if t["plate"] != "available":
        print(t["plate"])


def cmd_throughput(args: argparse.Namespace) -> int:
    require_deface()
    images = ensure_1080p(args.n)
    record = {
        "command": "throughput",
        "date": stamp(),
        "load_before": load(),
        "folder": str(BENCH_1080P),
        "provenance": provenance(),
    }
    record["throughput"] = throughput_runs(
        images, repeats=args.repeats, opencv=not args.no_opencv, settings=tuple(args.set)
    )
    record["load_after"] = load()
    print(
        f"{len(images)} x 1920x1080 JPEG q90 in {BENCH_1080P} — {record['date']}, "
        f"load {record['load_before']} -> {record['load_after']}, {os.cpu_count()} CPUs"
    )
    print_throughput(record["throughput"])
    _write_json(record, args.out or BUILD / f"deface-throughput-{_file_stamp()}.json")
    return 0


# --- helpers -----------------------------------------------------------------------------------


def _file_stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def _write_json(record: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help=f"create {DEFACE_VENV.name} with deface=={DEFACE_VERSION}")
    acc = sub.add_parser("accuracy", help="ours vs deface on street-masks-dev (full, even, odd ids)")
    acc.add_argument("--data", default=str(FACES), help="COCO folder (default: faces/street-masks-dev)")
    acc.add_argument("--out", type=Path, help="JSON record (default build/deface-accuracy-<time>.json)")
    thr = sub.add_parser("throughput", help="whole-process images/s on generated 1080p JPEGs")
    thr.add_argument("-n", type=int, default=24, help="number of 1080p images (default 24)")
    thr.add_argument("--repeats", type=int, default=2, help="runs per contender; the best counts (default 2)")
    thr.add_argument("--no-opencv", action="store_true", help="skip deface --backend opencv")
    thr.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="one more contender: ours with these options"
    )
    thr.add_argument("--out", type=Path, help="JSON record (default build/deface-throughput-<time>.json)")
    args = parser.parse_args(argv)
    return {"setup": cmd_setup, "accuracy": cmd_accuracy, "throughput": cmd_throughput}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
