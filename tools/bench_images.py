"""Benchmark images, made from real photos of ../shared/data (cached under build/): shared by
``bench.py`` (speed by size) and ``deface_baseline.py`` (throughput against deface)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ANONYMIZER_DATA", ROOT.parent / "shared" / "data"))
BUILD = ROOT / "build"
QUALITY = 90
SIZES = {"real": None, "720p": (1280, 720), "1080p": (1920, 1080), "12mp": (4000, 3000), "24mp": (6000, 4000)}


def _sources(kind: str) -> list[Path]:
    folder = {"dashcam": "plates/romania-dashcam", "faces": "faces/street-masks-dev", "cars": "plates/web-cars"}[kind]
    return sorted((DATA / folder / "images").glob("*.jpg"))


def real_images(n: int) -> list[Path]:
    """``n`` photos as they are, spread evenly over the three data sets (a third each)."""
    picked = []
    groups = [_sources("faces"), _sources("dashcam"), _sources("cars")]
    for g, files in enumerate(groups):
        k = n // 3 + (1 if g < n % 3 else 0)
        step = max(1, len(files) // max(k, 1))
        picked += files[::step][:k]
    return picked


def _cover(img, width: int, height: int):
    import cv2

    h, w = img.shape[:2]
    s = max(width / w, height / h)
    big = cv2.resize(img, (max(width, round(w * s)), max(height, round(h * s))), interpolation=cv2.INTER_CUBIC)
    y0, x0 = (big.shape[0] - height) // 2, (big.shape[1] - width) // 2
    return big[y0 : y0 + height, x0 : x0 + width]


def _grid(files: list[Path], start: int, width: int, height: int):
    import cv2
    import numpy as np

    cols, rows = max(2, round(width / 700)), max(1, round(height / 700))
    canvas = np.full((height, width, 3), 96, np.uint8)
    cw, ch = width // cols, height // rows
    for k in range(cols * rows):
        img = cv2.imread(str(files[(start + k * 7) % len(files)]))
        s = min(cw / img.shape[1], ch / img.shape[0])
        img = cv2.resize(img, (int(img.shape[1] * s), int(img.shape[0] * s)), interpolation=cv2.INTER_CUBIC)
        r, c = divmod(k, cols)
        y0, x0 = r * ch + (ch - img.shape[0]) // 2, c * cw + (cw - img.shape[1]) // 2
        canvas[y0 : y0 + img.shape[0], x0 : x0 + img.shape[1]] = img
    return canvas


def generate_images(size: str, n: int, folder: Path | None = None) -> list[Path]:
    """``n`` JPEGs of ``size`` (cached: an existing file of the right name is reused)."""
    import cv2
    import numpy as np

    width, height = SIZES[size]
    folder = folder or BUILD / f"bench-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    dashcam, faces = _sources("dashcam"), _sources("faces")
    paths = []
    for i in range(n):
        path = folder / f"{size}-{i:03d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        if i % 2 == 0:
            img = _cover(cv2.imread(str(dashcam[(i * 37) % len(dashcam)])), width, height)
        else:
            img = _grid(faces, i * 5, width, height)
        cv2.setRNGSeed(i)
        noise = np.empty((height, width * 3), np.int16)
        cv2.randn(noise, 0, 2)
        img = cv2.add(np.ascontiguousarray(img).reshape(height, -1), noise, dtype=cv2.CV_8U).reshape(height, width, 3)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        assert ok
        tmp = path.with_suffix(".part")
        tmp.write_bytes(buf.tobytes())
        tmp.replace(path)
    return paths


def images_for(size: str, n: int) -> list[Path]:
    return real_images(n) if size == "real" else generate_images(size, n)
