"""Property-based tests (hypothesis): the decoder and the option parser are total functions.

* ``imageio.probe`` / ``decode`` / ``metadata_markers`` on arbitrary bytes, on bytes behind a real magic
  number and on mutated valid images (bit flips, byte writes, inserts, deletes, truncation, header
  fields, with PNG CRCs repaired so mutations reach past libpng's checks) return a well-formed value
  or raise an ``AnonymizerError``; never another exception, never slowly.
* ``Anonymizer.anonymize`` on mutated images (with a stand-in detector, so the effects and the
  encoder run on every odd size) returns a clean Result or raises an ``AnonymizerError``.
* ``parse_options`` on arbitrary dicts of text returns in-range Options or raises InvalidOptionsError,
  and options that parse survive a round trip through their flat ``key=value`` form.

Runs are derandomized (the same examples every time, no example database), so CI is stable.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import time
from types import SimpleNamespace

import numpy as np
from badinput import CORPUS, fix_png_crcs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anonymizer import imageio
from anonymizer.detection import Detection
from anonymizer.effects import BLOCKS_MAX, BLOCKS_MIN, EFFECT_NAMES, SHAPES, STRENGTH_MAX, STRENGTH_MIN
from anonymizer.errors import (
    AnonymizerError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidOptionsError,
    UnsupportedImageError,
)
from anonymizer.options import MARGIN_MIN, Options, TargetOptions, parse_options
from anonymizer.pipeline import Anonymizer

EXAMPLES = int(os.environ.get("ANONYMIZER_PROPERTY_EXAMPLES", "200"))
"""Per property; raise it for a longer hunt (e.g. 5000 in a nightly job); 200 keeps CI under seconds."""
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_PIXELS = 2_000_000
"""A mutated header may claim a large but legal size; this caps what one example can cost."""
SLOW = 5.0  # seconds; one tiny input taking longer than this is a hang for our purposes

IMAGE_ERRORS = (InvalidImageError, UnsupportedImageError, ImageTooLargeError)
SEEDS = sorted(
    {c.data for c in CORPUS if c.data and len(c.data) <= 6000 and not c.options_only},
    key=lambda data: (len(data), data),
)
MAGICS = [
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe1",
    b"\xff\xd8\xff\xc0\x00\x11\x08",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
    b"GIF89a",
    b"GIF87a",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
    b"RIFF\x00\x00\x00\x00WEBPVP8X",
]
INTERESTING = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]


# ---------------------------------------------------------------------------------------------
# strategies


@st.composite
def positions(draw, size: int) -> int:
    """Mostly in the first 64 bytes (headers), sometimes anywhere."""
    if size <= 1:
        return 0
    return draw(st.one_of(st.integers(0, min(size, 64) - 1), st.integers(0, size - 1)))


@st.composite
def mutated_images(draw) -> bytes:
    buf = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "insert", "delete", "truncate", "field", "splice"]))
        at = draw(positions(len(buf)))
        if op == "flip" and buf:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and buf:
            buf[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, 0xD8, 0xD9, 0xDA]))
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[at : at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del buf[at:]
        elif op == "field":
            width, order = draw(st.sampled_from([2, 4])), draw(st.sampled_from("<>"))
            value = draw(st.sampled_from(INTERESTING)) & ((1 << (8 * width)) - 1)
            if at + width <= len(buf):
                struct.pack_into(order + ("H" if width == 2 else "I"), buf, at, value)
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS))
            start = draw(st.integers(0, max(len(other) - 1, 0)))
            buf[at:at] = other[start : start + draw(st.integers(1, 64))]
    if draw(st.booleans()):
        fix_png_crcs(buf)
    return bytes(buf)


arbitrary_bytes = st.binary(max_size=2048)
magic_bytes = st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGICS), st.binary(max_size=512))


# ---------------------------------------------------------------------------------------------
# decoder


def check_decoder(data: bytes) -> None:
    """probe, decode and metadata_markers: a valid value or an AnonymizerError, quickly."""
    started = time.perf_counter()
    try:
        info = imageio.probe(data)
    except IMAGE_ERRORS as exc:
        assert str(exc)
        info = None
    else:
        assert info.format in imageio.CONTENT_TYPES and info.width > 0 and info.height > 0

    try:
        markers = imageio.metadata_markers(data)
    except AnonymizerError as exc:
        assert str(exc)
    else:
        assert isinstance(markers, list) and all(isinstance(m, str) and m for m in markers)

    try:
        decoded = imageio.decode(data, max_pixels=MAX_PIXELS)
    except IMAGE_ERRORS as exc:
        assert str(exc)
    else:
        assert info is not None, "decode accepted bytes that probe refused"
        assert not info.animated
        pixels = decoded.pixels
        assert isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 3
        assert pixels.shape == (info.height, info.width, 3) and pixels.flags.c_contiguous
        assert pixels.size <= 3 * MAX_PIXELS
        if decoded.alpha is not None:
            assert decoded.alpha.dtype == np.uint8 and decoded.alpha.shape == pixels.shape[:2]
            assert decoded.alpha.flags.c_contiguous
        assert decoded.format == info.format
        assert decoded.quality is None or (decoded.format == "jpeg" and 1 <= decoded.quality <= 100)
    elapsed = time.perf_counter() - started
    assert elapsed < SLOW, f"{len(data)} bytes took {elapsed:.1f} s"


@PROPERTY
@given(arbitrary_bytes)
def test_decoder_on_arbitrary_bytes(data: bytes) -> None:
    check_decoder(data)


@PROPERTY
@given(magic_bytes)
def test_decoder_on_bytes_behind_a_real_magic_number(data: bytes) -> None:
    check_decoder(data)


@PROPERTY
@given(mutated_images())
def test_decoder_on_mutated_images(data: bytes) -> None:
    check_decoder(data)


def test_seeds_are_real_images() -> None:
    """The mutation seeds include valid images of every format (else the property above is weak)."""
    formats = set()
    for data in SEEDS:
        with contextlib.suppress(AnonymizerError):
            formats.add(imageio.decode(data).format)
    assert formats == set(imageio.CONTENT_TYPES), formats
    assert len(SEEDS) >= 30


# ---------------------------------------------------------------------------------------------
# the whole pipeline, with a stand-in detector (the effects and the encoder see every odd size)


class CentreDetector:
    """Finds one 'face' in the middle half of any image: no model, so each example is cheap."""

    card = SimpleNamespace(version="stand-in", threshold=0.5)  # the model card fields the pipeline reads

    def detect(self, pixels: np.ndarray, threshold=None, min_size=None) -> list[Detection]:
        h, w = pixels.shape[:2]
        return [Detection("face", 0.9, (w / 4, h / 4, 3 * w / 4, 3 * h / 4))]


STAND_IN = Anonymizer(lambda label: CentreDetector())


@settings(PROPERTY, max_examples=EXAMPLES // 2)
@given(mutated_images(), st.sampled_from([e for e in EFFECT_NAMES if e != "logo"]), st.sampled_from(SHAPES))
def test_anonymize_on_mutated_images(data: bytes, effect: str, shape: str) -> None:
    options = parse_options({"targets": "face", "effect": effect, "shape": shape, "max_pixels": str(MAX_PIXELS)})
    try:
        result = STAND_IN.anonymize(data, options)
    except AnonymizerError as exc:
        assert str(exc) and exc.http_status in (400, 413, 415)
        return
    assert imageio.metadata_markers(result.data) == []
    out = imageio.decode(result.data)
    src = imageio.decode(data, max_pixels=MAX_PIXELS)
    assert out.pixels.shape == src.pixels.shape
    assert (out.alpha is None) == (src.alpha is None or result.format == "jpeg")
    assert result.report["counts"] == {"face": 1}


# ---------------------------------------------------------------------------------------------
# options

GLOBAL_KEYS = ["targets", "format", "quality", "max_pixels"]
TARGET_KEYS = ["effect", "threshold", "min_size", "margin", "shape", "strength", "blocks", "color"]
ALL_KEYS = GLOBAL_KEYS + TARGET_KEYS + [f"{t}.{k}" for t in ("face", "plate") for k in TARGET_KEYS]
ODD_VALUES = [
    "", " ", "nan", "NaN", "inf", "-inf", "1e309", "-0", "0x10", "1_0", "٣", "１", "0.5\x00", "#FFFFFF", "#fff",
    "face,,plate", "FACE", "plates", "jpg", "TIF", "gif", "logo", "9" * 5000, "-1", "1e-300", "4.0", " 8 ",
]  # fmt: skip


def option_keys() -> st.SearchStrategy[str]:
    known = st.sampled_from(ALL_KEYS)
    spelled = st.builds(
        lambda key, upper, pad: (" " if pad else "") + (key.upper() if upper else key).replace("_", "-"),
        known,
        st.booleans(),
        st.booleans(),
    )
    return st.one_of(known, spelled, st.text(max_size=12))


def option_values() -> st.SearchStrategy[str]:
    numbers = st.one_of(
        st.integers(-(10**12), 10**12).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.floats(0, 1).map(str),
    )
    words = st.sampled_from(
        list(EFFECT_NAMES) + list(SHAPES) + list(imageio.CONTENT_TYPES) + ["face", "plate", "face,plate", "black"]
    )
    return st.one_of(st.text(max_size=12), numbers, words, st.sampled_from(ODD_VALUES))


def check_options(options: Options) -> None:
    assert options.targets and set(options.targets) <= {"face", "plate"}
    assert list(options.targets) == sorted(options.targets)  # canonical order: face before plate
    for target in ("face", "plate"):
        t = options.for_target(target)
        assert isinstance(t, TargetOptions)
        assert t.effect in EFFECT_NAMES and t.shape in SHAPES
        assert t.threshold is None or (math.isfinite(t.threshold) and 0.01 <= t.threshold <= 0.99)
        assert t.min_size is None or (math.isfinite(t.min_size) and 6 <= t.min_size <= 400)
        assert math.isfinite(t.margin) and MARGIN_MIN <= t.margin <= 1
        assert math.isfinite(t.strength) and STRENGTH_MIN <= t.strength <= STRENGTH_MAX
        assert isinstance(t.blocks, int) and BLOCKS_MIN <= t.blocks <= BLOCKS_MAX
        assert len(t.color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in t.color)
    assert options.output_format is None or options.output_format in imageio.OUTPUT_FORMATS
    assert options.quality is None or 1 <= options.quality <= 100
    assert 1 <= options.max_pixels <= 1_000_000_000


@PROPERTY
@given(st.dictionaries(option_keys(), option_values(), max_size=6), st.booleans())
def test_parse_options_on_arbitrary_text(values: dict[str, str], with_logo: bool) -> None:
    try:
        options = parse_options(values, logo=b"logo" if with_logo else None)
    except InvalidOptionsError as exc:
        assert str(exc)
        return
    check_options(options)


def flatten(options: Options) -> dict[str, str]:
    """The flat key=value form of Options, built from Options.to_dict() (plus max_pixels, which it omits)."""
    summary = options.to_dict()
    flat = {"targets": ",".join(summary["targets"]), "max_pixels": str(options.max_pixels)}
    for key in ("format", "quality"):
        if summary[key] is not None:
            flat[key] = str(summary[key])
    for target in ("face", "plate"):
        for key, value in summary[target].items():
            if value is not None:
                flat[f"{target}.{key}"] = str(value)
    return flat


def valid_values() -> st.SearchStrategy[dict[str, str]]:
    per_key = {
        "effect": st.sampled_from(EFFECT_NAMES),
        "shape": st.sampled_from([*SHAPES, "BOX", "Ellipse"]),
        "threshold": st.floats(0.01, 0.99).map(str),
        "min_size": st.one_of(st.floats(6, 400).map(str), st.integers(6, 400).map(str)),
        "margin": st.floats(MARGIN_MIN, 1).map(str),
        "strength": st.floats(STRENGTH_MIN, STRENGTH_MAX).map(str),
        "blocks": st.integers(BLOCKS_MIN, BLOCKS_MAX).map(str),
        "color": st.one_of(st.integers(0, 0xFFFFFF).map(lambda c: f"#{c:06x}"), st.sampled_from(["black", "Gray"])),
    }
    global_keys = {
        "targets": st.sampled_from(["face", "plate", "face,plate", "plates, faces", "PLATE"]),
        "format": st.sampled_from([*imageio.OUTPUT_FORMATS, "jpg", "TIF"]),
        "quality": st.integers(1, 100).map(str),
        "max_pixels": st.integers(1, 1_000_000_000).map(str),
    }
    entries = [st.tuples(st.just(k), v) for k, v in global_keys.items()]
    for key, strategy in per_key.items():
        entries += [st.tuples(st.just(name), strategy) for name in (key, f"face.{key}", f"plate.{key}")]
    return st.lists(st.one_of(entries), max_size=10).map(dict)


@PROPERTY
@given(valid_values())
def test_parsed_options_round_trip(values: dict[str, str]) -> None:
    options = parse_options(values, logo=b"logo")
    check_options(options)
    again = parse_options(flatten(options), logo=b"logo")
    assert again == options
    assert parse_options(flatten(again), logo=b"logo") == again
