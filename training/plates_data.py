"""Plate data: splits, training-sample generator (crops + augmentation + copy-paste + synthetic
plates) and CenterNet targets in the CenterFace output convention."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import cache, cached_property

import cv2
import numpy as np

SHARED = os.environ.get("ANON_SHARED", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared")))
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DASHCAM = os.path.join(SHARED, "data", "plates", "romania-dashcam")
WEBCARS = os.path.join(SHARED, "data", "plates", "web-cars")
OPENIMAGES = os.path.join(SHARED, "data", "plates", "openimages-dev")
OPENLPR = os.path.join(REPO, "build", "data", "open-lpr")  # made by training.convert_open_lpr
FACES = os.path.join(SHARED, "data", "faces", "street-masks-dev")
SPLITS = os.path.join(os.path.dirname(__file__), "splits.json")

PLATE_CAT = 2


@dataclass(frozen=True)
class Source:
    name: str  # the folder's name, as in splits.json and `anonymize eval --ids-key NAME.val_image_ids`
    root: str
    complete: bool  # every visible plate boxed? (if not: unlabelled detections are ignored in training)
    weight: float  # share of real-image training crops drawn from it


SOURCES = (
    Source("romania-dashcam", DASHCAM, True, 0.2),
    Source("web-cars", WEBCARS, True, 0.2),
    Source("openimages-dev", OPENIMAGES, False, 0.35),
    Source("open-lpr", OPENLPR, False, 0.25),
)
VAL_VIDEOS = ("dayride_type1_003", "nightride_type3_001")  # dashcam: whole videos (frames are near-copies)
WEB_VAL_FRACTION, WEB_SEED = 0.3, 0  # as before; its many copies join by closure
OPENIMAGES_VAL_FRACTION, OPENIMAGES_SEED = 0.2, 0
DUPLICATE_MAX_BITS = 20  # dHash distance of copies (web-cars: copies 0 bits, distinct photos >= 90 of 256)


def video_of(file_name: str) -> str:
    return re.sub(r"_t\d+\.\w+$", "", os.path.basename(file_name))


@dataclass
class Item:
    path: str
    image_id: int
    boxes: np.ndarray  # N x 4, x1 y1 x2 y2
    source: str
    extra: dict = field(default_factory=dict)
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # unlabelled plates


def load_coco(root: str, source: str) -> list[Item]:
    with open(os.path.join(root, "annotations.json")) as f:
        coco = json.load(f)
    boxes: dict[int, list] = {}
    for a in coco["annotations"]:
        if a["category_id"] == PLATE_CAT:
            x, y, w, h = a["bbox"]
            boxes.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    items = []
    for im in sorted(coco["images"], key=lambda i: i["id"]):
        b = np.array(boxes.get(im["id"], []), np.float32).reshape(-1, 4)
        extra = {"file_name": im["file_name"], "origin": im.get("origin")}
        items.append(Item(os.path.join(root, im["file_name"]), im["id"], b, source, extra))
    return items


def available_sources() -> list[Source]:
    return [s for s in SOURCES if os.path.exists(os.path.join(s.root, "annotations.json"))]


def dhash(path: str) -> np.ndarray:
    """256-bit gradient hash of a 17x16 grey thumbnail: equal for re-encoded / resized copies."""
    grey = cv2.resize(cv2.imread(path, cv2.IMREAD_GRAYSCALE), (17, 16), interpolation=cv2.INTER_AREA)
    return (grey[:, 1:] > grey[:, :-1]).ravel()


def duplicate_groups(items: list[Item], max_bits: int = DUPLICATE_MAX_BITS) -> list[int]:
    """Group label per item: items whose dHashes differ in <= max_bits bits (transitively) share one."""
    h = np.stack([dhash(it.path) for it in items]).astype(np.float32)
    dist = h @ (1 - h).T + (1 - h) @ h.T
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(dist <= max_bits, 1)), strict=True):
        parent[root(int(i))] = root(int(j))
    return [root(i) for i in range(len(items))]


def _seed_val(source: str, items: list[Item]) -> set[int]:
    """The validation ids each source's own rule picks, before duplicate closure."""
    if source == "romania-dashcam":
        return {i.image_id for i in items if video_of(i.extra["file_name"]) in VAL_VIDEOS}
    if source == "open-lpr":
        return {i.image_id for i in items if i.extra.get("origin") == "val"}  # the set's own val part
    fraction, seed = (
        (WEB_VAL_FRACTION, WEB_SEED) if source == "web-cars" else (OPENIMAGES_VAL_FRACTION, OPENIMAGES_SEED)
    )
    ids = np.array(sorted(i.image_id for i in items))
    perm = np.random.RandomState(seed).permutation(len(ids))
    return {int(i) for i in ids[perm[: int(round(fraction * len(ids)))]]}


def make_splits() -> dict:
    """Train/validation over every source, duplicate-aware across all of them: a photo and all its
    copies (dHash, any source) land on the same side, and a group touching validation goes there."""
    sources = available_sources()
    if [s.name for s in sources] != [s.name for s in SOURCES]:
        missing = sorted({s.name for s in SOURCES} - {s.name for s in sources})
        raise FileNotFoundError(f"sources missing: {missing} (open-lpr: python -m training.convert_open_lpr)")
    items = [it for s in sources for it in load_coco(s.root, s.name)]
    groups = duplicate_groups(items)
    seed = {s.name: _seed_val(s.name, [i for i in items if i.source == s.name]) for s in sources}
    val_groups = {g for it, g in zip(items, groups, strict=True) if it.image_id in seed[it.source]}
    out: dict = {
        "rule": (
            "validation = each source's own rule, then every image whose dHash (256 bits) is within "
            f"{DUPLICATE_MAX_BITS} bits of a validation image, in any source (transitively), moves to validation; "
            "thresholds are chosen on validation, never trained on"
        )
    }
    rules = {
        "romania-dashcam": f"whole videos {', '.join(VAL_VIDEOS)}",
        "web-cars": f"sorted ids, RandomState({WEB_SEED}).permutation, first {WEB_VAL_FRACTION:.0%}",
        "openimages-dev": (
            f"sorted ids (one per Open Images id), RandomState({OPENIMAGES_SEED}).permutation, "
            f"first {OPENIMAGES_VAL_FRACTION:.0%}"
        ),
        "open-lpr": "the set's own val.db part",
    }
    for s in sources:
        mine = [(it, g) for it, g in zip(items, groups, strict=True) if it.source == s.name]
        val = sorted(it.image_id for it, g in mine if g in val_groups)
        out[s.name] = {
            "rule": rules[s.name],
            "images": len(mine),
            "val_image_ids": val,
            "moved_by_duplicates": len(set(val) - seed[s.name]),
        }
    out["duplicate_groups_across_sources"] = sum(
        1 for g in set(groups) if len({it.source for it, gg in zip(items, groups, strict=True) if gg == g}) > 1
    )
    return out


def write_splits(path: str = SPLITS) -> dict:
    s = make_splits()
    with open(path, "w") as f:
        json.dump(s, f, indent=1)
        f.write("\n")
    return s


def read_splits(path: str = SPLITS) -> dict:
    with open(path) as f:
        return json.load(f)


IGNORE = os.path.join(REPO, "build", "data", "ignore.json")  # training.ignore_regions
AUDIT = os.path.join(os.path.dirname(__file__), "plate_audit.json")  # the plate verifier's audit by eye


def load_parts(splits: dict | None = None) -> dict[str, list[Item]]:
    """{'train', 'val', 'val/<source>'} over the sources present on this machine (recorded splits)."""
    splits = splits or read_splits()
    parts: dict[str, list[Item]] = {"train": [], "val": []}
    for s in available_sources():
        val_ids = set(splits[s.name]["val_image_ids"])
        items = load_coco(s.root, s.name)
        parts["train"] += [i for i in items if i.image_id not in val_ids]
        parts[f"val/{s.name}"] = [i for i in items if i.image_id in val_ids]
        parts["val"] += parts[f"val/{s.name}"]
    add_audited_plates(parts["train"])
    apply_ignore(parts["train"])
    return parts


def key(source: str, image_id: int) -> str:
    """An image's key in the audit: ``<source>/<image id>``."""
    return f"{source}/{image_id}"


def audited(path: str = AUDIT) -> dict[str, dict[str, np.ndarray]]:
    """The audit: ``{"plates"|"checked"|"unsure": {"<source>/<id>": N x 4}}`` — real unlabelled
    plates, proposals looked at and found not to be plates, and those too small or dark to tell."""
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    return {
        kind: {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in data.get(kind, {}).items()}
        for kind in ("plates", "checked", "unsure")
    }


def _audited(audit: dict, kind: str, it: Item) -> np.ndarray:
    return audit[kind].get(key(it.source, it.image_id), np.zeros((0, 4), np.float32))


def add_audited_plates(items: list[Item], path: str = AUDIT) -> int:
    """Real plates the labels miss, found by eye in the verifier's audit (training photos only),
    become positives: unboxed, they would teach the detector to miss plates like them."""
    audit, n = audited(path), 0
    for it in items:
        extra = _audited(audit, "plates", it)
        if len(extra):
            it.boxes = np.vstack([it.boxes, extra]).astype(np.float32)
            n += len(extra)
    return n


def apply_ignore(items: list[Item], path: str = IGNORE, audit_path: str = AUDIT) -> int:
    """Set each training item's ignore boxes from ``training.ignore_regions``' file (re-read every
    epoch, as that scan may still be running) and the audit's unsure boxes, less the scanned boxes
    the audit found not to be plates (those stay negatives); returns how many boxes were set."""
    from anonymizer_local.evaluation import iou_matrix

    ignore = {}
    if os.path.exists(path):
        with open(path) as f:
            ignore = json.load(f)
    audit, n = audited(audit_path), 0
    for it in items:
        scanned = np.array(ignore.get(it.source, {}).get(str(it.image_id), []), np.float32).reshape(-1, 4)
        checked = _audited(audit, "checked", it)  # looked at: not plates, so they stay negatives
        if len(scanned) and len(checked):
            scanned = scanned[iou_matrix(scanned, checked).max(1) < 0.3]
        it.ignore = np.vstack([scanned, _audited(audit, "unsure", it)]).astype(np.float32)
        n += len(it.ignore)
    return n


def face_backgrounds() -> list[str]:
    d = os.path.join(FACES, "images")
    return sorted(os.path.join(d, f) for f in os.listdir(d)) if os.path.isdir(d) else []


PACK_ITEMS = "items.json"  # the training set packed for a machine without ../shared (training.device_pack)


def load_pack(root: str) -> tuple[list[Item], list[str]]:
    """(training items, background photos) of a pack written by ``training.device_pack``.

    Each packed photo may be scaled down (``extra["scale"]``); ``extra["shape"]`` keeps the
    original's, so crops drawn "at the scale the product looks" stay at that scale."""
    with open(os.path.join(root, PACK_ITEMS)) as f:
        pack = json.load(f)
    items = [
        Item(
            os.path.join(root, r["file"]),
            r["image_id"],
            np.asarray(r["boxes"], np.float32).reshape(-1, 4),
            r["source"],
            {"scale": r["scale"], "shape": tuple(r["shape"])},
            np.asarray(r["ignore"], np.float32).reshape(-1, 4),
        )
        for r in pack["items"]
    ]
    return items, [os.path.join(root, f) for f in pack["backgrounds"]]


def _map_boxes(M: np.ndarray, boxes: np.ndarray, S: int, min_visible: float) -> np.ndarray:
    """Boxes through a perspective warp into an S x S crop; kept when this share stays visible."""
    nb = []
    for x1, y1, x2, y2 in boxes:
        pts = np.float32([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]).reshape(-1, 1, 2)
        p = cv2.perspectiveTransform(pts, M).reshape(-1, 2)
        # axis-aligned box of the warped quad, shrunk a little towards the mean of min/max
        lo, hi = p.min(0), p.max(0)
        lo2, hi2 = np.sort(p, 0)[1], np.sort(p, 0)[2]
        lo, hi = 0.5 * (lo + lo2), 0.5 * (hi + hi2)
        area = (hi[0] - lo[0]) * (hi[1] - lo[1])
        cl, ch = np.clip(lo, 0, S), np.clip(hi, 0, S)
        vis = max(0, ch[0] - cl[0]) * max(0, ch[1] - cl[1])
        if area > 0 and vis / area >= min_visible and (ch - cl).min() >= 2:
            nb.append([cl[0], cl[1], ch[0], ch[1]])
    return np.array(nb, np.float32).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------
# working resolution (inference input policy) -- the same function is used by eval and calibration
MIN_LONG_SIDE = 416  # chosen on the threshold-choice images (640 -> web AP50 0.86, 416 -> 0.95)


def inference_scale(shape: tuple[int, ...]) -> float:
    """The scale the product sees a photo at: small ones upscaled to the card's ``min_side``,
    the rest at native size (bigger ones too: their native tiles find the small plates).

    Until v5 the generator used 416 / long side for every source but the dashcam, so a 960 px
    web photo was drawn at 0.43x although the product looks at it 1:1: its background
    negatives (signs, text, badges) were never seen at the scale they are met.
    """
    from anonymizer.detection import working_scale

    return max(1.0, working_scale(shape[1], shape[0], _card_min_side(), 10**9))


@cache
def _card_min_side() -> int:
    from anonymizer.detection import ModelCard

    return ModelCard.load("plate").min_side


def working_image(bgr: np.ndarray, min_long: int = MIN_LONG_SIDE):
    """Upscale so the long side is >= min_long, pad bottom/right to multiples of 32.
    Returns (RGB float32 NCHW tensor, scale factor)."""
    h, w = bgr.shape[:2]
    f = max(1.0, min_long / max(h, w))
    if f != 1.0:
        bgr = cv2.resize(bgr, (int(round(w * f)), int(round(h * f))), interpolation=cv2.INTER_LINEAR)
    h2, w2 = bgr.shape[:2]
    H, W = int(math.ceil(h2 / 32) * 32), int(math.ceil(w2 / 32) * 32)
    x = np.zeros((1, 3, H, W), np.float32)
    x[0, :, :h2, :w2] = bgr[:, :, ::-1].transpose(2, 0, 1)
    return x, f


# ---------------------------------------------------------------------------------------------
# synthetic plates
_LET = "ABCDEFGHJKLMNPRSTUVWXYZ"
_DIG = "0123456789"


def _rand_text(rng, pattern):
    return "".join(rng.choice(list(_LET)) if c == "A" else rng.choice(list(_DIG)) if c == "9" else c for c in pattern)


def two_line_plate(rng: np.random.RandomState) -> np.ndarray:
    """Square-ish plates with two rows of characters (UK square, India, Japan, motorcycles, ...)."""
    W, H = [(280, 200), (330, 165), (340, 220), (300, 150), (220, 170)][rng.randint(5)]
    bg, col = [((245, 245, 245), (20, 20, 20)), ((40, 200, 250), (20, 20, 20)), ((25, 25, 25), (235, 235, 235)),
               ((60, 130, 40), (240, 240, 240))][rng.choice(4, p=[0.55, 0.25, 0.1, 0.1])]  # fmt: skip
    font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX]))
    img = np.full((H, W, 3), bg, np.uint8)
    x0 = 0
    if rng.rand() < 0.35:
        x0 = int(W * 0.1)
        img[:, :x0] = (160, 50, 0)  # BGR blue band
    rows = [_rand_text(rng, rng.choice(["AA-99", "AA 99 A", "AA 99", "99 AA", "AA99"])),
            _rand_text(rng, rng.choice(["AA 9999", "9999", "AAA 99", "99-99", "AA 999"]))]  # fmt: skip
    thick = int(rng.randint(3, 7))
    for k, text in enumerate(rows):
        (tw, th), _ = cv2.getTextSize(text, font, 1.0, thick)
        scale = min((W - x0 - 16) / tw, H * 0.36 / th)
        (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
        y = int(H * (0.44 if k == 0 else 0.9))
        cv2.putText(img, text, (x0 + (W - x0 - tw) // 2, y), font, scale, col, thick, cv2.LINE_AA)
    cv2.rectangle(img, (0, 0), (W - 1, H - 1), (30, 30, 30) if rng.rand() < 0.7 else bg, int(rng.randint(1, 5)))
    return img


def synthetic_plate(rng: np.random.RandomState) -> np.ndarray:
    style = rng.choice(["eu", "eu", "uk_rear", "uk_front", "us", "ro", "two_line", "two_line"])
    if style == "two_line":
        return two_line_plate(rng)
    font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX]))
    if style == "us":
        W, H = 300, 150
        bg = (235, 235, 235) if rng.rand() < 0.6 else tuple(int(v) for v in rng.randint(150, 255, 3))
        col = tuple(int(v) for v in rng.randint(0, 120, 3))
        text = _rand_text(rng, rng.choice(["9AAA999", "AAA 9999", "999 AAA"]))
    elif style.startswith("uk"):
        W, H = 520, 111
        bg = (40, 200, 250) if style == "uk_rear" else (245, 245, 245)
        col = (20, 20, 20)
        text = _rand_text(rng, "AA99 AAA")
    else:
        W, H = 520, 110
        bg = (245, 245, 245) if rng.rand() < 0.85 else (40, 200, 250)
        col = (20, 20, 20)
        text = _rand_text(rng, rng.choice(["AA 99 AAA", "A 999 AA", "AA 999 AA", "AAA 9999", "A AA 999"]))
    img = np.full((H, W, 3), bg, np.uint8)
    x0 = 0
    if style in ("eu", "ro", "uk_rear", "uk_front") and rng.rand() < 0.85:
        band = int(W * 0.08)
        img[:, :band] = (160, 50, 0)  # BGR blue band
        cv2.putText(
            img,
            rng.choice(["D", "F", "RO", "NL", "I", "GB", "PL"]),
            (int(band * 0.1), int(H * 0.85)),
            cv2.FONT_HERSHEY_SIMPLEX,
            band / 45.0,
            (255, 255, 255),
            2,
            cv2.LINE_AA,
        )
        x0 = band
    if style == "us":
        cv2.putText(
            img,
            rng.choice(["CALIFORNIA", "TEXAS", "NEW YORK", "OHIO", "FLORIDA"]),
            (int(W * 0.2), int(H * 0.2)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.7,
            col,
            2,
            cv2.LINE_AA,
        )
    avail = W - x0 - 16
    scale, thick = 1.0, int(rng.randint(3, 7))
    (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    scale = min(avail / tw, (H * (0.6 if style == "us" else 0.75)) / th)
    (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    org = (x0 + (W - x0 - tw) // 2, (H + th) // 2 + (int(H * 0.08) if style == "us" else 0))
    cv2.putText(img, text, org, font, scale, col, thick, cv2.LINE_AA)
    cv2.rectangle(img, (0, 0), (W - 1, H - 1), (30, 30, 30) if rng.rand() < 0.7 else bg, int(rng.randint(1, 5)))
    return img


# ---------------------------------------------------------------------------------------------
class SampleGenerator:
    """Produces (S x S x 3 BGR uint8 crop, N x 4 boxes) training samples."""

    def __init__(self, items: list[Item], backgrounds: list[str], seed: int = 0, weights: dict | None = None):
        self.items = [i for i in items if len(i.boxes)]
        self.pools = {name: [i for i in self.items if i.source == name] for name in {i.source for i in self.items}}
        w = weights or {src.name: src.weight for src in SOURCES}
        self.pool_names = sorted(n for n in self.pools if w.get(n, 0) > 0)
        p = np.array([w[n] for n in self.pool_names], np.float64)
        self.pool_p = p / p.sum()
        self.backgrounds = backgrounds
        self.rng = np.random.RandomState(seed)
        self.cache: dict[str, np.ndarray] = {}

    def imread(self, path):
        im = self.cache.get(path)
        if im is None:
            im = cv2.imread(path, cv2.IMREAD_COLOR)
            if len(self.cache) < 800:
                self.cache[path] = im
        return im

    @cached_property
    def crops(self) -> list[np.ndarray]:
        """Every labelled plate cut out, for copy-paste samples; made on first use, since it reads
        every photo (a process that only hands work to sample workers never needs it)."""
        crops = []
        for it in self.items:
            im = self.imread(it.path)
            for x1, y1, x2, y2 in it.boxes:
                c = im[int(round(y1)) : int(round(y2)), int(round(x1)) : int(round(x2))]
                if c.shape[0] >= 8 and c.shape[1] >= 16:
                    crops.append(c.copy())
        return crops

    # -- geometry -------------------------------------------------------------------------
    def _warp(self, im, boxes, S, f, center_src, center_dst, ignore=None):
        rng = self.rng
        ang = rng.uniform(-6, 6) if rng.rand() < 0.5 else 0.0
        A = cv2.getRotationMatrix2D((float(center_src[0]), float(center_src[1])), ang, f)
        A[:, 2] += np.array(center_dst) - np.array(center_src)
        M = np.vstack([A, [0, 0, 1]])
        if rng.rand() < 0.4:  # mild perspective
            src = np.float32([[0, 0], [S, 0], [S, S], [0, S]])
            dst = src + rng.uniform(-0.06, 0.06, (4, 2)).astype(np.float32) * S
            M = cv2.getPerspectiveTransform(src, dst).astype(np.float64) @ M
        border = cv2.BORDER_REFLECT_101 if rng.rand() < 0.5 else cv2.BORDER_CONSTANT
        out = cv2.warpPerspective(
            im,
            M,
            (S, S),
            flags=cv2.INTER_LINEAR,
            borderMode=border,
            borderValue=tuple(int(v) for v in rng.randint(0, 255, 3)),
        )
        nb = _map_boxes(M, boxes, S, 0.45)
        if ignore is None:
            return out, nb
        return out, nb, _map_boxes(M, ignore, S, 0.01)

    def _target_width(self, S):
        return math.exp(self.rng.uniform(math.log(10), math.log(0.9 * S)))

    def from_real(self, S):
        rng = self.rng
        pool = self.pools[self.pool_names[rng.choice(len(self.pool_names), p=self.pool_p)]]
        it = pool[rng.randint(len(pool))]
        im = self.imread(it.path)
        b = it.boxes[rng.randint(len(it.boxes))]
        bw = b[2] - b[0]
        at_inference = inference_scale(it.extra.get("shape", im.shape)) / it.extra.get("scale", 1.0)
        if rng.rand() < 0.35:  # near the inference scale
            f = at_inference * rng.uniform(0.7, 1.3)
            f = min(f, 0.9 * S / bw)
        else:
            f = self._target_width(S) / bw
        f = float(np.clip(f, 0.05, 6.0))
        c_src = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
        half = min(bw * f / 2, S / 2 - 1)
        c_dst = (rng.uniform(half * 0.6, S - half * 0.6), rng.uniform(0.1 * S, 0.9 * S))
        if rng.rand() < 0.25:  # anywhere in the frame at the inference scale: background negatives
            f = at_inference * rng.uniform(0.6, 1.4)
            c_src = (rng.uniform(0, im.shape[1]), rng.uniform(0, im.shape[0]))
            c_dst = (S / 2, S / 2)
        return self._warp(im, it.boxes, S, f, c_src, c_dst, it.ignore)

    def from_paste(self, S):
        rng = self.rng
        if self.backgrounds and rng.rand() < 0.8:
            bg = self.imread(self.backgrounds[rng.randint(len(self.backgrounds))])
        else:
            bg = np.full((S, S, 3), rng.randint(0, 255, 3), np.uint8)
            bg = cv2.add(bg, rng.randint(0, 60, bg.shape).astype(np.uint8))
        f = S / min(bg.shape[:2]) * rng.uniform(1.0, 1.6)
        c = (bg.shape[1] / 2 + rng.uniform(-0.2, 0.2) * bg.shape[1], bg.shape[0] / 2)
        out, _ = self._warp(bg, np.zeros((0, 4)), S, f, c, (S / 2, S / 2))
        no_ignore = np.zeros((0, 4), np.float32)
        boxes = []
        for _ in range(rng.randint(0, 4)):  # 0 plates: pure negative (faces!)
            p = synthetic_plate(rng) if rng.rand() < 0.4 or not self.crops else self.crops[rng.randint(len(self.crops))]
            w = self._target_width(S) * 0.8
            h = max(4.0, w * p.shape[0] / p.shape[1] * rng.uniform(0.8, 1.25))
            if h > 0.9 * S:
                continue
            x, y = rng.uniform(0, S - w), rng.uniform(0, S - h)
            src = np.float32([[0, 0], [p.shape[1], 0], [p.shape[1], p.shape[0]], [0, p.shape[0]]])
            j = rng.uniform(-0.08, 0.08, (4, 2)) * np.array([w, h])
            dst = np.float32([[x, y], [x + w, y], [x + w, y + h], [x, y + h]] + j)
            M = cv2.getPerspectiveTransform(src, dst)
            warped = cv2.warpPerspective(p, M, (S, S), flags=cv2.INTER_LINEAR)
            mask = cv2.warpPerspective(np.full(p.shape[:2], 255, np.uint8), M, (S, S))
            if w > 30:
                mask = cv2.GaussianBlur(mask, (3, 3), 0)
            a = mask[..., None].astype(np.float32) / 255
            out = (out * (1 - a) + warped * a).astype(np.uint8)
            lo, hi = dst.min(0), dst.max(0)
            lo, hi = np.clip(lo, 0, S), np.clip(hi, 0, S)
            if (hi - lo).min() >= 2:
                boxes.append([lo[0], lo[1], hi[0], hi[1]])
        return out, np.array(boxes, np.float32).reshape(-1, 4), no_ignore

    # -- photometric ----------------------------------------------------------------------
    def photometric(self, im):
        rng = self.rng
        im = im.astype(np.float32)
        if rng.rand() < 0.8:
            im = im * rng.uniform(0.6, 1.4) + rng.uniform(-40, 40)
            m = im.mean()
            im = (im - m) * rng.uniform(0.6, 1.4) + m
        if rng.rand() < 0.3:
            im = 255 * (np.clip(im, 0, 255) / 255) ** rng.uniform(0.6, 1.6)
        if rng.rand() < 0.22:  # night
            im = 255 * (np.clip(im, 0, 255) / 255) ** rng.uniform(1.8, 3.0) * rng.uniform(0.4, 0.9)
            im = im + rng.normal(0, rng.uniform(3, 12), im.shape)
        if rng.rand() < 0.2:
            im = im * rng.uniform(0.85, 1.15, 3)  # colour cast
        im = np.clip(im, 0, 255).astype(np.uint8)
        if rng.rand() < 0.25:
            if rng.rand() < 0.5:
                k = int(rng.choice([3, 5]))
                im = cv2.GaussianBlur(im, (k, k), 0)
            else:  # motion blur
                k = int(rng.randint(3, 9))
                ker = np.zeros((k, k), np.float32)
                ker[k // 2, :] = 1.0 / k
                ker = cv2.warpAffine(
                    ker, cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1), (k, k)
                )
                im = cv2.filter2D(im, -1, ker / max(ker.sum(), 1e-6))
        if rng.rand() < 0.2:
            im = np.clip(im + rng.normal(0, rng.uniform(2, 10), im.shape), 0, 255).astype(np.uint8)
        if rng.rand() < 0.3:
            q = int(rng.randint(25, 90))
            im = cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)
        if rng.rand() < 0.1:
            im = cv2.cvtColor(cv2.cvtColor(im, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        return im

    def sample(self, S):
        """(crop, plate boxes, ignore boxes: unlabelled plates in sets whose labels are incomplete)."""
        im, boxes, ignore = self.from_real(S) if self.rng.rand() < 0.75 else self.from_paste(S)
        if self.rng.rand() < 0.5:
            im = im[:, ::-1].copy()
            boxes, ignore = (
                np.stack([S - b[:, 2], b[:, 1], S - b[:, 0], b[:, 3]], 1) if len(b) else b for b in (boxes, ignore)
            )
        return self.photometric(im), boxes, ignore


# ---------------------------------------------------------------------------------------------
def ignore_weights(ignore: np.ndarray, S: int, stride: int = 4) -> np.ndarray:
    """(1,h,w) weights of the heatmap's negative loss: 0 over unlabelled plates, so a set whose labels
    are incomplete does not teach the network to miss the plates it left unboxed."""
    h = w = S // stride
    wt = np.ones((1, h, w), np.float32)
    for x1, y1, x2, y2 in ignore:
        wt[0, int(y1 // stride) : int(math.ceil(y2 / stride)), int(x1 // stride) : int(math.ceil(x2 / stride))] = 0
    return wt


def make_targets(boxes: np.ndarray, S: int, stride: int = 4, max_objs: int = 32):
    """CenterNet targets: heatmap (1,h,w) with elliptical Gaussians (TTFNet-style sigma = 0.54 *
    size / 6), and per-object (index, scale (log h/4, log w/4), offset (dy, dx)) with
    centre = (cell + offset + 0.5) * stride."""
    h = w = S // stride
    hm = np.zeros((1, h, w), np.float32)
    ind = np.zeros(max_objs, np.int64)
    msk = np.zeros(max_objs, np.float32)
    scale = np.zeros((max_objs, 2), np.float32)
    off = np.zeros((max_objs, 2), np.float32)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    for k, (x1, y1, x2, y2) in enumerate(boxes[:max_objs]):
        bw, bh = x2 - x1, y2 - y1
        if bw < 1 or bh < 1:
            continue
        cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
        ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
        sx, sy = max(0.54 * bw / stride / 6, 0.35), max(0.54 * bh / stride / 6, 0.35)
        g = np.exp(-((xs - ix) ** 2) / (2 * sx * sx) - ((ys - iy) ** 2) / (2 * sy * sy))
        np.maximum(hm[0], g, out=hm[0])
        hm[0, iy, ix] = 1.0
        ind[k], msk[k] = iy * w + ix, 1.0
        scale[k] = (math.log(bh / stride), math.log(bw / stride))
        off[k] = (cy - iy - 0.5, cx - ix - 0.5)
    return hm, ind, msk, scale, off
