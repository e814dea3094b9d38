"""Effects that make a region (a face, a licence plate) unrecognisable.

Every effect works on the crop of the region only, never on the full image, so the cost
depends on the size of the region and a 50-megapixel photo with two small faces stays fast.

The effects are built to be *irreversible*, not merely to look different:

* ``blur`` scales its sigma with the region (a fixed sigma leaves large faces recognisable)
  and adds seeded noise after blurring, so deconvolution with the known PSF has nothing to
  recover: the frequencies that carry identity are attenuated far below the noise floor.
* ``pixelate`` keeps only the mean colour of a few blocks.
* ``fill`` and ``logo`` keep nothing of the region (the logo sits on a solid background).
* ``deform`` is a random warp (seeded from the region's own pixels, so an attacker cannot
  regenerate it) applied to a coarse, noisy version of the region: even the exact inverse
  warp only gives back a ~8-pixel-wide blob. A plain swirl is invertible and has been
  undone in practice (the "Mr Swirl" case), hence the loss.

Randomness is seeded from a hash of the region's original pixels: the same input gives the
same output (reproducible runs, cacheable results), yet the seed is unknown to anyone who
does not already have the original.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field

import cv2
import numpy as np

from anonymizer.errors import InvalidOptionsError

EFFECT_NAMES: tuple[str, ...] = ("blur", "pixelate", "fill", "logo", "deform")
SHAPES: tuple[str, ...] = ("ellipse", "box")

# Strength is a multiplier of the default; the range matches the request options. At the
# weakest, 0.5 (blur sigma = max(w, h) / 12), a real face in a box enlarged by a 10 % margin
# still scores far below the recognisability bound (tests/unit/test_effects.py); in a box
# with no margin at all it is borderline, which is why the pipeline enlarges boxes.
STRENGTH_MIN = 1.0  # weaker settings left faces near the recognisability bound (tests)
STRENGTH_MAX = 5.0
BLOCKS_MIN = 2
BLOCKS_MAX = 8  # 10+ blocks: identity survives upscaling attacks (tests/unit/test_privacy.py)

# Logo PNGs are decoded from user input: refuse absurd sizes before decoding any pixel.
LOGO_MAX_SIDE = 4096
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# blur: sigma = strength * max(w, h) / _BLUR_SIGMA_DIVISOR, computed on a crop downscaled so
# that the sigma there is at most _BLUR_MAX_SMALL_SIGMA pixels (same result, far cheaper).
_BLUR_SIGMA_DIVISOR = 6.0
_BLUR_MAX_SMALL_SIGMA = 4.0
_BLUR_NOISE_STD = 2.0
# deform: the region is reduced to this many pixels across its longer side before warping.
# Measured on a real face (tests/unit/test_effects.py): with 12 px the exact inverse warp gives
# back a blob in which eyes and smile are still visible; 8 px leaves only a blob. The loss does
# not depend on strength: the floor of irreversibility is not a user option.
_DEFORM_GRID = 8
_DEFORM_NOISE_STD = 8.0
_DEFORM_AMOUNT = 0.15  # max displacement as a fraction of the longer side, times strength
_DEFORM_FIELD_NODES = 5  # random control vectors per side of the smooth displacement field
_DEFORM_WORK_SIDE = 256  # larger regions are warped at this size (content is smooth) and upscaled
# ellipse mask: width of the soft rim outside the ellipse, as a fraction of its shorter axis.
_FEATHER = 0.15


@dataclass(frozen=True)
class EffectSpec:
    """What to do to each region; validated by :func:`validate_spec`."""

    name: str = "blur"  # blur | pixelate | fill | logo | deform
    shape: str = "ellipse"  # ellipse | box  (mask of the region)
    strength: float = 1.0  # multiplier of the default strength (blur sigma, deform amount)
    blocks: int = 8  # pixelate: mosaic blocks across the region's longer side
    color: tuple[int, int, int] = (0, 0, 0)  # fill colour (and logo background), RGB
    logo: np.ndarray | None = None  # logo: BGRA uint8 (PNG with alpha)
    # video: one secret seed per track replaces the region's pixel hash, so the noise and the
    # warp field stay put from frame to frame (a shimmering field would reveal the shape)
    seed: bytes | None = field(default=None, repr=False)


def validate_spec(spec: EffectSpec) -> None:
    """Raise :class:`InvalidOptionsError` when ``spec`` cannot be applied.

    Validation happens before any image is touched, so a bad request fails fast and clearly
    instead of half-way through an image.
    """
    if spec.name not in EFFECT_NAMES:
        raise InvalidOptionsError(f"unknown effect {spec.name!r}; expected one of {', '.join(EFFECT_NAMES)}")
    if spec.shape not in SHAPES:
        raise InvalidOptionsError(f"unknown shape {spec.shape!r}; expected one of {', '.join(SHAPES)}")
    strength = spec.strength
    if (
        isinstance(strength, bool)
        or not isinstance(strength, int | float | np.integer | np.floating)
        or not math.isfinite(strength)
        or not STRENGTH_MIN <= strength <= STRENGTH_MAX
    ):
        raise InvalidOptionsError(f"strength must be a number in [{STRENGTH_MIN}, {STRENGTH_MAX}]")
    blocks = spec.blocks
    if isinstance(blocks, bool) or not isinstance(blocks, int | np.integer) or not (BLOCKS_MIN <= blocks <= BLOCKS_MAX):
        raise InvalidOptionsError(f"blocks must be an integer in [{BLOCKS_MIN}, {BLOCKS_MAX}]")
    color = spec.color
    if (
        not isinstance(color, tuple | list)
        or len(color) != 3
        or not all(isinstance(c, int | np.integer) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
    ):
        raise InvalidOptionsError("color must be three integers in [0, 255] (R, G, B)")
    if spec.name == "logo":
        logo = spec.logo
        if logo is None:
            raise InvalidOptionsError("effect 'logo' needs a logo image")
        if (
            not isinstance(logo, np.ndarray)
            or logo.dtype != np.uint8
            or logo.ndim != 3
            or logo.shape[2] != 4
            or logo.shape[0] < 1
            or logo.shape[1] < 1
        ):
            raise InvalidOptionsError("logo must be a BGRA uint8 image")


def load_logo(png_bytes: bytes) -> np.ndarray:
    """Decode a PNG logo into a BGRA uint8 array.

    Only PNG is accepted because the logo needs an alpha channel to look right; a PNG without
    alpha gets an opaque one. The header is checked first so that a hostile file cannot make
    us allocate a gigantic buffer (the logo is user input in the API).
    """
    if not isinstance(png_bytes, bytes | bytearray | memoryview):
        raise InvalidOptionsError("logo must be PNG bytes")
    data = bytes(png_bytes)
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise InvalidOptionsError("logo is not a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    if not (1 <= width <= LOGO_MAX_SIDE and 1 <= height <= LOGO_MAX_SIDE):
        raise InvalidOptionsError(f"logo must be between 1 and {LOGO_MAX_SIDE} pixels per side")
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise InvalidOptionsError("logo PNG cannot be decoded") from exc
    if img is None or img.size == 0:
        raise InvalidOptionsError("logo PNG cannot be decoded")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise InvalidOptionsError("logo PNG has an unsupported pixel type")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGRA)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    elif img.shape[2] != 4:
        raise InvalidOptionsError("logo PNG has an unsupported number of channels")
    return np.ascontiguousarray(img)


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """Round ``box`` outwards to whole pixels and clip it to the image; None if nothing is left.

    Rounding outwards (floor/ceil) never shrinks the region: losing a pixel row of a face is
    worse than touching one pixel of background.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    ix1 = max(0, math.floor(x1))
    iy1 = max(0, math.floor(y1))
    ix2 = min(width, math.ceil(x2))
    iy2 = min(height, math.ceil(y2))
    if ix2 <= ix1 or iy2 <= iy1:
        return None
    return ix1, iy1, ix2, iy2


def apply_effect(image: np.ndarray, box: tuple[int, int, int, int], spec: EffectSpec) -> None:
    """Anonymize ``box`` (x1, y1, x2, y2; x2/y2 exclusive) of a BGR uint8 ``image`` in place.

    The box is clipped to the image; an empty box is a no-op. Only the crop is processed and
    only pixels inside the box change.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be an H x W x 3 uint8 BGR array")
    validate_spec(spec)
    clipped = clip_box(box, image.shape[1], image.shape[0])
    if clipped is None:
        return
    x1, y1, x2, y2 = clipped
    crop = image[y1:y2, x1:x2]
    effected = _EFFECTS[spec.name](np.ascontiguousarray(crop), spec)
    if spec.shape == "box":
        crop[...] = effected
        return
    mask = ellipse_mask(crop.shape[1], crop.shape[0])
    # one pass in C. cv2 divides by w1 + w2 (+1e-5), which is 1 here, so weight 1 yields exactly
    # the effect and weight 0 exactly the original after rounding
    crop[...] = cv2.blendLinear(effected, np.ascontiguousarray(crop), mask, 1.0 - mask)


def ellipse_mask(width: int, height: int) -> np.ndarray:
    """H x W float32 weights: 1 inside the ellipse inscribed in the box, soft rim outside.

    The feathering goes *outwards* (into the box corners) so that every pixel of the ellipse
    is fully replaced: a rim feathered inwards would let the edge of the face shine through.
    Where the ellipse touches the box edges the rim is cut off by the box, which is already
    enlarged by the detection margin. Only one quadrant is computed and then mirrored (the
    mask is symmetric), which matters for regions of several megapixels.
    """
    a = width / 2.0
    b = height / 2.0
    qw, qh = (width + 1) // 2, (height + 1) // 2
    xs = (np.arange(qw, dtype=np.float32) + 0.5 - a) / a
    ys = (np.arange(qh, dtype=np.float32) + 0.5 - b) / b
    r = np.sqrt(xs[None, :] ** 2 + ys[:, None] ** 2)
    # distance outside the ellipse in pixels (approximately), over the rim width
    rim = max(1.0, _FEATHER * min(a, b))
    t = np.clip((r - 1.0) * (min(a, b) / rim), 0.0, 1.0)
    quadrant = 1.0 - t * t * (3.0 - 2.0 * t)  # smoothstep: no visible seam at either end
    top = np.concatenate([quadrant, quadrant[:, : width - qw][:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[: height - qh][::-1]], axis=0), dtype=np.float32)


def _seeded_rng(crop: np.ndarray, spec: EffectSpec, purpose: str) -> np.random.Generator:
    """A generator seeded from the region's original pixels, the effect parameters and a purpose.

    The purpose keeps independent draws (noise, warp field) independent of each other's order.
    """
    h = hashlib.blake2b(digest_size=16)
    if spec.seed is not None:  # video track: the same draws on every frame, whatever the box size
        h.update(repr((purpose, spec.name, float(spec.strength))).encode())
        h.update(spec.seed)
        return np.random.default_rng(int.from_bytes(h.digest(), "little"))
    h.update(repr((purpose, crop.shape, spec.name, float(spec.strength))).encode())
    h.update(np.ascontiguousarray(crop).tobytes())
    return np.random.default_rng(int.from_bytes(h.digest(), "little"))


def _resize(img: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    """cv2.resize that keeps a trailing channel axis for 1-channel input and allows 1 px sizes."""
    out = cv2.resize(img, (max(1, width), max(1, height)), interpolation=interpolation)
    if out.ndim == 2 and img.ndim == 3:
        out = out[:, :, None]
    return out


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def blur_sigma(width: int, height: int, strength: float) -> float:
    """Gaussian sigma in pixels for a region: proportional to its size.

    A fixed sigma leaves large faces recognisable; sigma = max(w, h) / 6 smears each facial
    feature over the whole face.
    """
    return strength * max(width, height) / _BLUR_SIGMA_DIVISOR


def _blur(crop: np.ndarray, spec: EffectSpec) -> np.ndarray:
    """Region-scaled Gaussian blur plus seeded noise (irreversible loss against deconvolution).

    Large sigmas are applied on a crop downscaled so that sigma is <= 4 px there: downscaling
    with area averaging then blurring is, for such sigmas, the same low-pass as blurring at
    full size, at a tiny fraction of the cost. Noise is added at that small scale, which puts
    it exactly in the frequency band where the identity used to be.
    """
    h, w = crop.shape[:2]
    sigma = blur_sigma(w, h, spec.strength)
    scale = min(1.0, _BLUR_MAX_SMALL_SIGMA / sigma)
    if scale < 1.0:
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        small = _resize(crop, sw, sh, cv2.INTER_AREA).astype(np.float32)
        s_sigma = sigma * min(sw / w, sh / h)
    else:
        sw, sh, small, s_sigma = w, h, crop.astype(np.float32), sigma
    k = 2 * math.ceil(3.0 * s_sigma) + 1
    small = cv2.GaussianBlur(small, (k, k), s_sigma, borderType=cv2.BORDER_REPLICATE)
    noise = _seeded_rng(crop, spec, "noise").normal(0.0, _BLUR_NOISE_STD, (sh, sw, 1))
    small = small + noise.astype(np.float32)
    small = _to_uint8(small)
    if (sw, sh) == (w, h):
        return small
    return _resize(small, w, h, cv2.INTER_LINEAR)


def _pixelate(crop: np.ndarray, spec: EffectSpec) -> np.ndarray:
    """Mosaic: ``blocks`` square-ish blocks across the longer side, each the mean of its pixels."""
    h, w = crop.shape[:2]
    longer = max(w, h)
    bw = max(1, round(spec.blocks * w / longer))
    bh = max(1, round(spec.blocks * h / longer))
    small = _resize(crop, min(bw, w), min(bh, h), cv2.INTER_AREA)
    return _resize(small, w, h, cv2.INTER_NEAREST)


def _fill(crop: np.ndarray, spec: EffectSpec) -> np.ndarray:
    """Solid colour: spec.color is RGB, the image is BGR."""
    r, g, b = (int(c) for c in spec.color)
    out = np.empty_like(crop)
    out[...] = (b, g, r)
    return out


def _logo(crop: np.ndarray, spec: EffectSpec) -> np.ndarray:
    """The logo, scaled to fit and centred, alpha-composited over a solid ``spec.color`` fill.

    The background is solid rather than a blurred or pixelated face because transparent and
    semi-transparent logo pixels show what lies beneath: a solid fill leaks nothing at all,
    while even a heavy mosaic would leak the coarse layout and skin tone of the face.
    """
    out = _fill(crop, spec)
    logo = spec.logo
    assert logo is not None  # validate_spec guarantees it
    h, w = crop.shape[:2]
    lh, lw = logo.shape[:2]
    scale = min(w / lw, h / lh)
    tw, th = max(1, min(w, round(lw * scale))), max(1, min(h, round(lh * scale)))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    scaled = _resize(logo, tw, th, interp)
    ox, oy = (w - tw) // 2, (h - th) // 2
    alpha = scaled[:, :, 3].astype(np.float32) * (1.0 / 255.0)
    region = out[oy : oy + th, ox : ox + tw]
    region[...] = cv2.blendLinear(np.ascontiguousarray(scaled[:, :, :3]), region, alpha, 1.0 - alpha)
    return out


def _deform_sizes(width: int, height: int) -> tuple[int, int]:
    """Size at which the warp is computed: the crop, or at most _DEFORM_WORK_SIDE px across."""
    scale = min(1.0, _DEFORM_WORK_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _work_field(width: int, height: int, crop: np.ndarray, spec: EffectSpec) -> np.ndarray:
    rng = _seeded_rng(crop, spec, "field")
    nodes = rng.normal(0.0, 1.0, (_DEFORM_FIELD_NODES, _DEFORM_FIELD_NODES, 2)).astype(np.float32)
    field = _resize(nodes, width, height, cv2.INTER_CUBIC)
    peak = float(np.abs(field).max()) or 1.0
    return field * (spec.strength * _DEFORM_AMOUNT * max(width, height) / peak)


def deform_field(crop: np.ndarray, spec: EffectSpec) -> np.ndarray:
    """The displacement field (H x W x 2 float32, dx and dy in crop pixels) deform uses on ``crop``.

    Random vectors on a coarse grid of control nodes, interpolated bicubically: smooth, so the
    result looks like a deformation rather than noise, and random, so no closed-form inverse
    (like a swirl's) exists. Computing it needs the region's *original* pixels (the seed), so
    only someone who already has the face can know it; it is public so that tests can play
    the strongest attacker, one who knows the field exactly. (Regions wider than
    _DEFORM_WORK_SIDE are warped at that size; the field returned is then that one, upscaled.)
    """
    h, w = crop.shape[:2]
    ww, wh = _deform_sizes(w, h)
    field = _work_field(ww, wh, crop, spec)
    if (ww, wh) == (w, h):
        return field
    return _resize(field, w, h, cv2.INTER_LINEAR) * np.array([w / ww, h / wh], dtype=np.float32)


def _deform(crop: np.ndarray, spec: EffectSpec) -> np.ndarray:
    """Coarse + noisy + randomly warped: the loss makes it irreversible even for a known warp.

    The region is first reduced to ~8 pixels across (area average) and noised there, so at
    most an 8-pixel-wide blob of information survives; then the smooth random warp is
    applied. Knowing the field and applying its inverse only gives back that blob. The noise
    is the same on all three channels: brightness blotches, not garish colour speckles. The
    content is smooth after the reduction, so large regions are warped at a reduced size and
    upscaled, which looks the same and costs a fraction.
    """
    h, w = crop.shape[:2]
    longer = max(w, h)
    gw = max(1, min(w, round(_DEFORM_GRID * w / longer)))
    gh = max(1, min(h, round(_DEFORM_GRID * h / longer)))
    small = _resize(crop, gw, gh, cv2.INTER_AREA).astype(np.float32)
    noise = _seeded_rng(crop, spec, "noise").normal(0.0, _DEFORM_NOISE_STD, (gh, gw, 1))
    ww, wh = _deform_sizes(w, h)
    coarse = _resize(_to_uint8(small + noise.astype(np.float32)), ww, wh, cv2.INTER_CUBIC)
    field = _work_field(ww, wh, crop, spec)
    map_x = np.arange(ww, dtype=np.float32)[None, :] + field[:, :, 0]
    map_y = np.arange(wh, dtype=np.float32)[:, None] + field[:, :, 1]
    out = cv2.remap(coarse, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if (ww, wh) != (w, h):
        out = _resize(out, w, h, cv2.INTER_LINEAR)
    return out


_EFFECTS = {
    "blur": _blur,
    "pixelate": _pixelate,
    "fill": _fill,
    "logo": _logo,
    "deform": _deform,
}
