"""Pack the plate detector's training set for a machine that has no ``../shared`` (the GPU that
the ``device`` tool may lend), small enough to travel with the working tree (64 MiB in all).

    python -m training.device_pack                    # -> build/device-pack (ignored by git), prints its size
    python -m training.train_plates --pack build/device-pack --device cuda ...   # there (plate.md)

What travels: every training photo of ``training/splits.json`` (never a validation photo), with
its plates, the audit's extra plates and its ignore regions, re-encoded as WebP and scaled down
where its smallest plate allows (it stays at least ``min_plate`` px wide, so the plates that are
hard, the small ones, keep their pixels); half of open-lpr's alike parked cars; and the
plate-free face photos the generator pastes plates onto. Each photo keeps its original shape,
so crops "at the scale the product looks" are drawn at that scale (``plates_data.load_pack``).
The validation photos stay here: thresholds and figures are measured here, on the fp32 model
that comes back.
"""

from __future__ import annotations

import argparse
import json
import os

import cv2
import numpy as np

from training import plates_data as D

OUT = os.path.join(D.REPO, "build", "device-pack")
# Defaults that fit today's training set into ~37 MiB (the repository's tracked files take ~25 of the 64)
QUALITY, MIN_PLATE, FLOOR = 50, 30.0, 0.25
SHARES = {"open-lpr": 0.5}  # one parked car per photo, big plates: half of them travel


def pack_scale(shape: tuple[int, ...], boxes: np.ndarray, min_plate: float, max_side: int, floor: float) -> float:
    """The photo's scale in the pack: down to ``max_side``, and further while its smallest plate
    keeps ``min_plate`` px (never below ``floor``, never up)."""
    scale = min(1.0, max_side / max(shape[:2]))
    if len(boxes):
        smallest = float((boxes[:, 2] - boxes[:, 0]).min())
        scale = min(scale, max(floor, min_plate / max(smallest, 1.0)))
    return scale


def encode(image: np.ndarray, scale: float, quality: int) -> bytes:
    """WebP: at the same quality about 60 % of a JPEG's bytes (Open Images photos, OpenCV's encoders)."""
    if scale < 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise ValueError("WebP encoding failed")
    return buf.tobytes()


def kept(image_id: int, share: float) -> bool:
    """Every k-th photo by id for a ``share`` of 1/k (a source of many alike photos can travel in part)."""
    return share >= 1.0 or (share > 0 and image_id % max(1, round(1 / share)) == 0)


def pack(
    out: str = OUT,
    *,
    quality: int = QUALITY,
    min_plate: float = MIN_PLATE,
    max_side: int = 1024,
    floor: float = FLOOR,
    shares: dict[str, float] | None = None,
    backgrounds: int = 200,
    background_side: int = 512,
) -> dict:
    """Write the pack; returns its summary (also in ``items.json``)."""
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "backgrounds"), exist_ok=True)
    train = D.load_parts()["train"]  # audit plates and ignore regions applied
    shares = SHARES if shares is None else shares
    rows, sizes = [], {}
    for it in train:
        if not kept(it.image_id, shares.get(it.source, 1.0)):
            continue
        image = cv2.imread(it.path, cv2.IMREAD_COLOR)
        if image is None:
            continue
        scale = pack_scale(image.shape, it.boxes, min_plate, max_side, floor)
        name = f"images/{it.source}-{it.image_id}.webp"
        data = encode(image, scale, quality)
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        sizes[it.source] = sizes.get(it.source, 0) + len(data)
        rows.append(
            {
                "file": name,
                "source": it.source,
                "image_id": it.image_id,
                "shape": list(image.shape[:2]),
                "scale": scale,
                "boxes": (it.boxes * scale).round(1).tolist(),
                "ignore": (it.ignore * scale).round(1).tolist(),
            }
        )
    faces = D.face_backgrounds()
    step = max(1, len(faces) // backgrounds) if backgrounds else 0
    names = []
    for k, path in enumerate(faces[::step][:backgrounds] if step else []):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            continue
        name = f"backgrounds/{k}.webp"
        data = encode(image, min(1.0, background_side / max(image.shape[:2])), quality)
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        sizes["backgrounds"] = sizes.get("backgrounds", 0) + len(data)
        names.append(name)
    summary = {
        "photos": len(rows),
        "plates": int(sum(len(r["boxes"]) for r in rows)),
        "backgrounds": len(names),
        "mib": {k: round(v / 2**20, 1) for k, v in sizes.items()},
        "mib_total": round(sum(sizes.values()) / 2**20, 1),
        "settings": {
            "quality": quality,
            "min_plate": min_plate,
            "max_side": max_side,
            "floor": floor,
            "shares": shares,
        },
    }
    with open(os.path.join(out, D.PACK_ITEMS), "w") as f:
        json.dump({"summary": summary, "items": rows, "backgrounds": names}, f)
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--quality", type=int, default=QUALITY, help="WebP quality")
    ap.add_argument("--min-plate", type=float, default=MIN_PLATE, help="px the smallest plate of a photo keeps")
    ap.add_argument("--max-side", type=int, default=1024, help="px of a packed photo's long side, at most")
    ap.add_argument("--floor", type=float, default=FLOOR, help="the smallest scale a photo is packed at")
    ap.add_argument(
        "--share", action="append", default=[], metavar="SOURCE=FRACTION", help="pack every k-th photo of a source"
    )
    ap.add_argument("--backgrounds", type=int, default=200, help="plate-free face photos to pack")
    args = ap.parse_args(argv)
    summary = pack(
        args.out,
        quality=args.quality,
        min_plate=args.min_plate,
        max_side=args.max_side,
        floor=args.floor,
        shares={**SHARES, **{k: float(v) for k, v in (pair.split("=") for pair in args.share)}},
        backgrounds=args.backgrounds,
    )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
