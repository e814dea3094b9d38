#!/usr/bin/env python3
"""Benchmark suite (``make bench``; not part of the tests): speed, latency by stage, memory, cold start.

    python tools/bench.py                       # every size, the default number of images
    python tools/bench.py --quick               # a few images per size
    python tools/bench.py --sizes 1080p,24mp --out build/bench.json

For each size — ``real`` (photos from ../shared/data as they are: ~400 px street photos, 416 px web
cars, 1280x720 dashcam frames) and generated ``720p``, ``1080p``, ``12mp`` (4000x3000) and ``24mp``
(6000x4000) JPEGs (quality 90) — a fresh process loads the models, anonymizes one image to warm up,
then each image once, and reports: images per second (pipeline only, files already in memory),
median and p95 latency per image and per stage (``timings_ms`` of the report: decode, detect per
model, effects, encode), peak resident memory of that process (``ru_maxrss``: it includes the
models and the runtime) and output/input JPEG size. Separately: cold start (import + model load in
a fresh process) and, on the 1080p images, deface's CLI against ours as whole processes (faces only).

Generated images are made from real photos (never copied into the repository; cached under
build/bench-<size>/): even ones are dashcam frames scaled to cover the size, odd ones a grid of
street-masks photos (cells ~700 px) so that they contain many faces. Gaussian noise (sigma 2) is
added so the JPEGs carry camera-like entropy instead of the smoothness of an upscale.

The load average is recorded before and after every measurement: other work on the machine slows
every figure here down.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_images import BUILD, SIZES, images_for  # noqa: E402

COUNTS = {"real": 30, "720p": 24, "1080p": 24, "12mp": 6, "24mp": 4}
QUICK_COUNTS = {"real": 6, "720p": 4, "1080p": 4, "12mp": 2, "24mp": 2}
STAGES = ("decode", "detect_face+plate", "detect_face", "detect_plate", "effects", "encode", "total")


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# --- worker (one size, one fresh process) -------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return round(values[lo] + (values[hi] - values[lo]) * (k - lo), 1)


def worker(files: list[Path], targets: str, settings: list[str]) -> dict:
    t0 = time.perf_counter()
    from anonymizer.options import parse_options, parse_settings
    from anonymizer.pipeline import Anonymizer

    anonymizer = Anonymizer()
    options = parse_options({"targets": targets, **parse_settings(settings)})
    anonymizer.preload(tuple(options.targets))
    load_s = time.perf_counter() - t0
    blobs = [f.read_bytes() for f in files]
    anonymizer.anonymize(blobs[0], options)  # warm-up (first-run allocations, lazy init)
    walls, stages, ratios, megapixels, faces = [], {s: [] for s in STAGES}, [], [], 0
    started = time.perf_counter()
    for data in blobs:
        t = time.perf_counter()
        result = anonymizer.anonymize(data, options)
        walls.append((time.perf_counter() - t) * 1000)
        for s in STAGES:
            if s in result.report["timings_ms"]:
                stages[s].append(result.report["timings_ms"][s])
        ratios.append(len(result.data) / len(data))
        image = result.report["image"]
        megapixels.append(image["width"] * image["height"] / 1e6)
        faces += result.report["counts"].get("face", 0)
    elapsed = time.perf_counter() - started
    return {
        "images": len(files),
        "targets": list(options.targets),
        "megapixels_median": round(statistics.median(megapixels), 2),
        "input_bytes_median": int(statistics.median(len(b) for b in blobs)),
        "images_per_s": round(len(files) / elapsed, 3),
        "latency_ms": {"p50": _pct(walls, 0.5), "p95": _pct(walls, 0.95), "max": round(max(walls), 1)},
        "stages_ms": {s: {"p50": _pct(v, 0.5), "p95": _pct(v, 0.95)} for s, v in stages.items() if v},
        "output_input_ratio": {
            "median": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
        },
        "faces_found": faces,
        "model_load_s": round(load_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_size(size: str, files: list[Path], targets: str, settings: list[str]) -> dict:
    before = load()
    cmd = [sys.executable, __file__, "--worker", "--targets", targets, *map(str, files)]
    cmd += [f"--set={kv}" for kv in settings]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker for {size} failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(size=size, load_before=before, load_after=load())
    return result


# --- network time per model -------------------------------------------------------------------


def network_times(repeats: int = 7) -> dict:
    """Median ms of one 1920x1088 pass (a 1080p frame) per shipped model: the cost of each network."""
    import numpy as np

    from anonymizer.detection import HEADS, MODELS_DIR
    from anonymizer.networks import Network

    rng = np.random.default_rng(0)
    blob = rng.uniform(0, 255, (1, 3, 1088, 1920)).astype(np.float32)
    times = {}
    for card_path in sorted(MODELS_DIR.glob("*.json")):
        card = json.loads(card_path.read_text())
        network = Network(MODELS_DIR / card["file"], card["sha256"], card_path.stem)
        names = [f"{k}_{h}" for k in card["members"] for h in HEADS] if "members" in card else HEADS
        network.run(names, [blob])
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            network.run(names, [blob])
            runs.append((time.perf_counter() - t) * 1000)
        times[card["file"]] = round(statistics.median(runs), 1)
    return times


# --- cold start --------------------------------------------------------------------------------

_COLD = """
import time
t = time.perf_counter()
from anonymizer.pipeline import Anonymizer
t_import = time.perf_counter() - t
Anonymizer().preload({labels!r})
print(t_import, time.perf_counter() - t)
"""


def cold_start(labels: list[str], repeats: int = 3) -> dict:
    runs = []
    for _ in range(repeats):
        before = load()
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", _COLD.format(labels=tuple(labels))], capture_output=True, text=True, check=True
        ).stdout.split()
        wall = time.perf_counter() - t
        runs.append(
            {
                "import_s": round(float(out[0]), 3),
                "import_and_load_s": round(float(out[1]), 3),
                "process_wall_s": round(wall, 3),
                "load_before": before,
            }
        )
    key = lambda k: round(statistics.median(r[k] for r in runs), 3)  # noqa: E731
    return {
        "models": labels,
        "runs": runs,
        "median": {k: key(k) for k in ("import_s", "import_and_load_s", "process_wall_s")},
    }


# --- main --------------------------------------------------------------------------------------


def plate_available() -> tuple[bool, str]:
    proc = subprocess.run(
        [sys.executable, "-c", "from anonymizer.pipeline import Anonymizer; Anonymizer().detector('plate')"],
        capture_output=True,
        text=True,
    )
    if proc.returncode == 0:
        return True, "available"
    return False, "plate model not available: " + (proc.stderr.strip().splitlines() or ["?"])[-1]


def print_table(results: list[dict]) -> None:
    def cell(r: dict, stage: str) -> str:
        s = r["stages_ms"].get(stage)
        return f"{s['p50']:.0f}/{s['p95']:.0f}" if s else "-"

    head = f"{'size':<6} {'n':>3} {'MP':>5} {'img/s':>6} {'lat p50':>8} {'lat p95':>8} {'decode':>11} "
    head += f"{'det joint':>11} {'det face':>11} {'det plate':>11} {'effects':>9} {'encode':>11} "
    head += f"{'RSS MB':>7} {'out/in':>6} {'load':>5}"
    print(head)
    print(" " * 44 + "(stages: p50/p95 ms)")
    for r in results:
        print(
            f"{r['size']:<6} {r['images']:>3} {r['megapixels_median']:>5.1f} {r['images_per_s']:>6.2f} "
            f"{r['latency_ms']['p50']:>8.0f} {r['latency_ms']['p95']:>8.0f} {cell(r, 'decode'):>11} "
            f"{cell(r, 'detect_face+plate'):>11} {cell(r, 'detect_face'):>11} {cell(r, 'detect_plate'):>11} "
            f"{cell(r, 'effects'):>9} "
            f"{cell(r, 'encode'):>11} {r['peak_rss_mb']:>7.0f} {r['output_input_ratio']['median']:>6.2f} "
            f"{r['load_before'][0]:>5.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few images per size")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated of {','.join(SIZES)}")
    parser.add_argument("--targets", help="default: face,plate when the plate model exists, else face")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a request option, e.g. face.min_size=30"
    )
    parser.add_argument("--networks", action="store_true", help="only: ms per 1080p pass of each model")
    parser.add_argument("--no-deface", action="store_true", help="skip the deface comparison")
    parser.add_argument("--out", type=Path, help="JSON file (default build/bench-<timestamp>.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker([Path(f) for f in args.files], args.targets, args.set)))
        return 0

    if args.networks:
        from anonymizer.networks import default_threads

        print(f"one 1920x1088 pass, {default_threads()} threads, load {load()}")
        for name, ms in network_times().items():
            print(f"  {name:<24} {ms:>7.1f} ms")
        return 0
    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    counts = QUICK_COUNTS if args.quick else COUNTS
    plate_ok, plate_note = plate_available()
    targets = args.targets or ("face,plate" if plate_ok else "face")
    if "plate" in targets and not plate_ok:
        print(f"{plate_note}; continuing with faces only", file=sys.stderr)
        targets = "face"
    import deface_baseline as db  # tools/ is on sys.path (top of this file)

    record = {
        "provenance": db.provenance(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "load_before": load(),
        "targets": targets,
        "plate": plate_note,
        "quick": args.quick,
        "settings": args.set,
    }
    print(f"bench {record['date']}  cpus {record['cpus']}  load {record['load_before']}  targets {targets}  {args.set}")
    if not plate_ok:
        print(plate_note)

    labels = targets.split(",")
    record["cold_start"] = cold_start(labels)
    c = record["cold_start"]["median"]
    print(
        f"cold start ({'+'.join(labels)}; median of 3 fresh processes): import {c['import_s']:.2f} s, "
        f"import + model load {c['import_and_load_s']:.2f} s, whole process {c['process_wall_s']:.2f} s"
    )

    results = []
    files_by_size = {}
    for size in sizes:
        files_by_size[size] = images_for(size, counts[size])
        results.append(run_size(size, files_by_size[size], targets, args.set))
        print(f"  {size}: {results[-1]['images']} images, {results[-1]['images_per_s']:.2f} img/s", flush=True)
    record["sizes"] = results
    print()
    print_table(results)

    if not args.no_deface and "1080p" in sizes:
        if not db.DEFACE_BIN.exists():
            print(f"\ndeface comparison skipped: {db.DEFACE_VENV} missing (python tools/deface_baseline.py setup)")
        else:
            files = files_by_size["1080p"]
            t = db.throughput_runs(files, repeats=1 if args.quick else 2, opencv=False)
            record["deface_1080p"] = t
            print(f"\nwhole processes on the {len(files)} 1080p images (start-up included; faces only unless noted):")
            db.print_throughput(t)

    record["load_after"] = load()
    out = args.out or BUILD / f"bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"\nload {record['load_before']} -> {record['load_after']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
