"""Convert the OpenLPR plate-detection set (Apache-2.0) to the COCO layout of ``../shared/data``.

Source: github.com/faisalthaheem/open-lpr-dataset-plate-detection, brought onto this machine
with the session tool ``fetch`` (a bare git mirror). Nothing of it is committed: the converted set
goes to ``build/data/open-lpr`` (git-ignored) and is read from there by ``training.plates_data``.

The SQLite tables (``train.db``, ``val.db``, table ``annotations``) hold one row per photo with
``imgareas`` = JSON list of ``{x, y, width, height}`` boxes from the top-left. Images whose decoded
size disagrees with the recorded one (EXIF-rotated phone photos) are rotated back to the size the
annotator saw, or dropped when neither orientation fits.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import tempfile

import cv2
import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MIRROR = "/work/.mirror/faisalthaheem+open-lpr-dataset-plate-detection/repo"
OUT = os.path.join(REPO, "build", "data", "open-lpr")
SOURCE = "github.com/faisalthaheem/open-lpr-dataset-plate-detection @7251620"
LICENSE = "Apache-2.0 (repository licence); some photos carry classified-ad watermarks"


def git_blob(mirror: str, path: str) -> bytes:
    return subprocess.run(["git", "--git-dir", mirror, "show", f"HEAD:{path}"], check=True, capture_output=True).stdout


def stored_paths(mirror: str) -> set[str]:
    """Paths whose blob is really in the mirror (a snapshot may list a file it does not hold)."""
    tree = subprocess.run(
        ["git", "--git-dir", mirror, "ls-tree", "-r", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    entries = [(line.split("\t", 1)[1], line.split()[2]) for line in tree]
    check = subprocess.run(
        ["git", "--git-dir", mirror, "cat-file", "--batch-check"],
        input="\n".join(sha for _, sha in entries) + "\n",
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    return {path for (path, _), line in zip(entries, check, strict=True) if not line.endswith("missing")}


def rows(db_bytes: bytes) -> list[tuple]:
    with tempfile.NamedTemporaryFile(suffix=".db") as tmp:
        tmp.write(db_bytes)
        tmp.flush()
        con = sqlite3.connect(tmp.name)
        try:
            return con.execute(
                "select filename, imheight, imwidth, isdeleted, isbackground, imgareas from annotations"
            ).fetchall()
        finally:
            con.close()


def convert(mirror: str = MIRROR, out: str = OUT) -> dict:
    if os.path.isdir(os.path.join(mirror, ".git")):
        mirror = os.path.join(mirror, ".git")
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    images, annotations, dropped = [], [], []
    present = stored_paths(mirror)
    for part in ("train", "val"):
        for filename, h, w, deleted, background, areas in rows(git_blob(mirror, f"{part}.db")):
            if deleted:
                continue
            if f"{part}/{filename}" not in present:
                dropped.append((filename, "not in the snapshot"))
                continue
            raw = np.frombuffer(git_blob(mirror, f"{part}/{filename}"), np.uint8)
            img = cv2.imdecode(raw, cv2.IMREAD_COLOR)  # applies EXIF orientation
            if img is None:
                dropped.append((filename, "undecodable"))
                continue
            if img.shape[:2] != (h, w):
                plain = cv2.imdecode(raw, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
                if plain is not None and plain.shape[:2] == (h, w):
                    img = plain
                else:
                    dropped.append((filename, f"size {img.shape[:2]} != recorded {(h, w)}"))
                    continue
            boxes = [] if background else json.loads(areas or "[]")
            name = f"images/olpr_{part}_{os.path.splitext(filename)[0]}.jpg"
            cv2.imwrite(os.path.join(out, name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": name, "width": w, "height": h, "origin": part})
            for b in boxes:
                x, y, bw, bh = (float(b[k]) for k in ("x", "y", "width", "height"))
                x0, y0 = max(0.0, x), max(0.0, y)
                x1, y1 = min(float(w), x + bw), min(float(h), y + bh)
                if x1 - x0 < 2 or y1 - y0 < 2:
                    continue
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 2,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
    coco = {
        "info": {
            "source": SOURCE,
            "license": LICENSE,
            "note": "parked cars (India, Pakistan, UK, Spain, Gulf); one tight box per image, so other "
            "visible plates may be unlabelled: score recall",
            "dropped": dropped,
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "plate"}],
    }
    with open(os.path.join(out, "annotations.json"), "w") as f:
        json.dump(coco, f)
    return {"images": len(images), "plates": len(annotations), "dropped": len(dropped)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", default=MIRROR)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    print(convert(args.mirror, args.out))


if __name__ == "__main__":
    main()
