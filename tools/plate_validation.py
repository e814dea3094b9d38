"""Plate figures on the mixed validation split (never trained on), per source and per plate width.

Runs ``anonymize eval --targets plate --json`` on each source's validation ids from
``training/splits.json`` (the product's own passes, thresholds and int8 models) and prints one
Markdown table per measure, as in ``models/plate.md``:

    python tools/plate_validation.py [--set plate.threshold=0.4] [--json build/plate-validation.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.plates_data import SOURCES, SPLITS  # noqa: E402


def run_eval(root: str, name: str, settings: list[str]) -> dict:
    cmd = [
        str(Path(sys.executable).parent / "anonymize"),
        "eval",
        root,
        "--targets",
        "plate",
        "--json",
        "--ids",
        SPLITS,
        "--ids-key",
    ]
    cmd += [f"{name}.val_image_ids", *[a for s in settings for a in ("--set", s)]]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)["results"]["plate"]


def pooled(rows: dict[str, dict]) -> dict:
    """All sources together: recall and precision pooled over objects and detections."""
    objects = sum(r["objects"] for r in rows.values())
    found = sum(r["recall@0.5"] * r["objects"] for r in rows.values())
    dets = sum(r["detections"] for r in rows.values())
    hits = sum(r["precision@0.5"] * r["detections"] for r in rows.values())
    widths = {}
    for r in rows.values():
        for k, v in r["recall@0.5_by_width"].items():
            w = widths.setdefault(k, {"objects": 0, "found": 0.0})
            w["objects"] += v["objects"]
            w["found"] += (v["recall"] or 0) * v["objects"]
    return {
        "images": sum(r["images"] for r in rows.values()),
        "objects": objects,
        "recall@0.5": round(found / objects, 4),
        "precision@0.5": round(hits / max(dets, 1), 4),
        "AP50": None,
        "threshold": next(iter(rows.values()))["threshold"],
        "recall@0.5_by_width": {
            k: {"objects": v["objects"], "recall": round(v["found"] / v["objects"], 4) if v["objects"] else None}
            for k, v in widths.items()
        },
    }


def table(rows: dict[str, dict]) -> str:
    bins = list(next(iter(rows.values()))["recall@0.5_by_width"])
    head = "| source | images | plates | thr | recall@0.5 | precision@0.5 | AP50 | " + " | ".join(bins) + " |"
    lines = [head, "|" + "---|" * (7 + len(bins))]
    for name, r in rows.items():
        w = r["recall@0.5_by_width"]
        cells = [f"{w[b]['recall']:.3f} ({w[b]['objects']})" if w[b]["recall"] is not None else "—" for b in bins]
        ap = f"{r['AP50']:.3f}" if r["AP50"] is not None else "—"
        lines.append(
            f"| {name} | {r['images']} | {r['objects']} | {r['threshold']:.2f} | {r['recall@0.5']:.3f} | "
            f"{r['precision@0.5']:.3f} | {ap} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="option, as in the CLI")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    args = ap.parse_args(argv)
    rows = {s.name: run_eval(s.root, s.name, args.set) for s in SOURCES if Path(s.root, "annotations.json").exists()}
    rows["all (pooled)"] = pooled(rows)
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
