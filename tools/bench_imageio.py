#!/usr/bin/env python3
"""Decode cost per input format (not part of the tests): what HEIC, AVIF and ICC conversion add.

    python tools/bench_imageio.py                    # 12 MP (4000 x 3000), 5 runs each
    python tools/bench_imageio.py --size 6000x4000 --runs 3

Builds one photo-like picture (a real face from scikit-image tiled over the size, plus noise, so
the codecs see camera-like entropy), encodes it as JPEG (quality 90), JPEG tagged Display P3
(converted to sRGB on decode), PNG, WebP, HEIC (pillow-heif, quality 90) and AVIF (Pillow,
quality 90), then prints the median ``imageio.decode`` time per format and what the sRGB
conversion alone costs. Needs the dev extras (Pillow, pillow-heif, scikit-image).
"""

from __future__ import annotations

import argparse
import io
import statistics
import struct
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the shared byte builders
from badinput import DISPLAY_P3  # noqa: E402

from anonymizer import imageio  # noqa: E402
from anonymizer.imageio.colour import to_srgb  # noqa: E402


def picture(width: int, height: int) -> np.ndarray:
    from skimage import data

    face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    tiles = np.tile(face, (height // face.shape[0] + 1, width // face.shape[1] + 1, 1))[:height, :width]
    noise = np.random.default_rng(0).normal(0, 2, tiles.shape)
    return np.clip(tiles + noise, 0, 255).astype(np.uint8)


def encodings(img: np.ndarray) -> dict[str, bytes]:
    import pillow_heif
    from PIL import Image

    jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    profile = DISPLAY_P3
    app2 = b"\xff\xe2" + struct.pack(">H", len(profile) + 16) + b"ICC_PROFILE\0\x01\x01" + profile
    rgb = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1]))
    heic, avif = io.BytesIO(), io.BytesIO()
    pillow_heif.from_pillow(rgb).save(heic, format="HEIF", quality=90)
    rgb.save(avif, format="AVIF", quality=90)
    return {
        "jpeg": jpeg,
        "jpeg+P3": jpeg[:2] + app2 + jpeg[2:],
        "png": cv2.imencode(".png", img)[1].tobytes(),
        "webp": cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 90])[1].tobytes(),
        "heic": heic.getvalue(),
        "avif": avif.getvalue(),
    }


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT (default %(default)s)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    img = picture(width, height)
    print(f"imageio.decode, {width}x{height} ({width * height / 1e6:.1f} MP), median of {args.runs} runs")
    print(f"{'format':10} {'MiB':>7} {'decode ms':>10}")
    for name, data in encodings(img).items():
        imageio.decode(data)  # warm-up: first use loads libheif
        ms = median_ms(lambda data=data: imageio.decode(data), args.runs)
        print(f"{name:10} {len(data) / 2**20:7.2f} {ms:10.1f}")
    ms = median_ms(lambda: to_srgb(img, DISPLAY_P3), args.runs)
    print(f"Display P3 -> sRGB conversion alone: {ms:.1f} ms")


if __name__ == "__main__":
    main()
