"""A bounded, coverage-free mutational fuzzer for the image decoder, the pipeline and the option parser.

    python tools/fuzz.py --seconds 60            # fuzz for a minute (exit 1 if anything crashed)
    python tools/fuzz.py --inputs 100000 --seconds 0   # the benchmark run: 100,000 inputs, no time limit
    python tools/fuzz.py --inputs 20000 --seconds 0 --seed 3   # one chunk; seeds 0..4 make another 100,000
    python tools/fuzz.py --replay build/fuzz-crashes/*.bin

Seeds are the generated bad-input corpus (tests/badinput.py): valid images of every format plus the
hostile ones. Each input is a seed after 1-6 mutations (mostly one or two): bit flips, interesting bytes, inserted,
deleted or duplicated ranges, truncation, 2/4-byte header fields set to boundary values (biased
towards the first bytes and towards structure markers such as IHDR, SOF, SOS, VP8X), chunks spliced
in from another seed, and PNG CRCs repaired so mutations get past libpng's checksum.

Every input goes through ``imageio.probe``, ``imageio.metadata_markers``, ``imageio.decode`` and
``Anonymizer.anonymize`` (alternately with the real face model and with a stand-in detector that
marks the middle of any image, so the effects and the encoder see every odd size). Every fifth input
is instead a random option map for ``parse_options``.

Allowed outcomes: a value, or an ``AnonymizerError`` with a message ("clean error", counted by its
code). Anything else is a crash: another exception type, a published image that still carries
metadata or does not decode to the input's size, or an input slower than --hang seconds. Crashing
inputs are saved to build/fuzz-crashes/ (bytes + traceback) and the exit status is 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import time
import traceback
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")  # decoder warnings on purpose-broken files are noise here

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the corpus generator and its mutation helpers
sys.path.insert(0, str(ROOT / "layers" / "anonymizer"))

from badinput import CORPUS, fix_png_crcs  # noqa: E402

from anonymizer import imageio  # noqa: E402
from anonymizer.detection import Detection  # noqa: E402
from anonymizer.effects import EFFECT_NAMES, SHAPES  # noqa: E402
from anonymizer.errors import AnonymizerError  # noqa: E402
from anonymizer.options import parse_options  # noqa: E402
from anonymizer.pipeline import Anonymizer  # noqa: E402

INTERESTING_BYTES = [0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF, 0xD8, 0xD9, 0xDA, 0xC0, 0xC2, 0x2C, 0x21, 0x3B]
INTERESTING_INTS = [0, 1, 2, 3, 4, 7, 8, 15, 16, 0x3FFF, 0x4000, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000,
                    0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]  # fmt: skip
ANCHORS = [b"IHDR", b"IDAT", b"PLTE", b"tRNS", b"eXIf", b"acTL", b"fcTL", b"IEND", b"\xff\xc0", b"\xff\xc2",
           b"\xff\xc4", b"\xff\xdb", b"\xff\xda", b"\xff\xe1", b"\xff\xee", b"Exif", b"VP8 ", b"VP8L", b"VP8X",
           b"ALPH", b"ANMF", b"EXIF", b"NETSCAPE", b"\x21\xf9", b"\x2c\x00", b"II*\x00", b"MM\x00*",
           b"BM"]  # fmt: skip
OPTION_KEYS = ["targets", "format", "quality", "max_pixels"] + [
    f"{prefix}{key}"
    for prefix in ("", "face.", "plate.")
    for key in ("effect", "threshold", "min_size", "margin", "shape", "strength", "blocks", "color")
]
OPTION_WORDS = [*EFFECT_NAMES, *SHAPES, *imageio.CONTENT_TYPES, "face", "plate", "faces,plates", "jpg", "TIF",
                "black", "white", "#00ff00", "#FFF", "nan", "inf", "-inf", "1e309", "1e-309", "-0", "0x10", "1_000",
                "٣", "１２", " 8 ", "", " ", "\x00", "9" * 5000, "0.5", "0.01", "0.99", "1", "2", "16", "17", "100",
                "101", "400", "1000000000", "1000000001"]  # fmt: skip


class Hang(Exception):
    """Raised by the alarm when one input takes longer than --hang seconds."""


class CentreDetector:
    """Marks the middle half of any image as a face: exercises effects and encoding on every size."""

    card = SimpleNamespace(version="stand-in", threshold=0.5)  # the model card fields the pipeline reads

    def detect(self, pixels, threshold=None, min_size=None):
        h, w = pixels.shape[:2]
        return [Detection("face", 0.9, (w / 4, h / 4, 3 * w / 4, 3 * h / 4))]


# ---------------------------------------------------------------------------------------------
# mutations


class Mutator:
    def __init__(self, rng: random.Random, seeds: list[bytes]):
        self.rng = rng
        self.seeds = seeds

    def position(self, buf: bytearray) -> int:
        rng, n = self.rng, len(buf)
        if n <= 1:
            return 0
        roll = rng.random()
        if roll < 0.35:
            return rng.randrange(min(n, 64))  # headers
        if roll < 0.6:
            anchors = [buf.find(a) for a in ANCHORS]
            anchors = [a for a in anchors if a >= 0]
            if anchors:
                return min(n - 1, rng.choice(anchors) + rng.randrange(16))
        return rng.randrange(n)

    def mutate(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        count = 1
        while count < 6 and rng.random() < 0.4:  # mostly one or two: deep enough to stay near valid
            count += 1
        for _ in range(count):
            op = rng.choice(["flip", "byte", "insert", "delete", "duplicate", "truncate", "field", "field", "splice"])
            at = self.position(buf)
            if op == "flip" and buf:
                buf[at] ^= 1 << rng.randrange(8)
            elif op == "byte" and buf:
                buf[at] = rng.choice(INTERESTING_BYTES)
            elif op == "insert":
                buf[at:at] = rng.randbytes(rng.randint(1, 32))
            elif op == "delete":
                del buf[at : at + rng.randint(1, 64)]
            elif op == "duplicate" and buf:
                start = rng.randrange(len(buf))
                buf[at:at] = buf[start : start + rng.randint(1, 256)]
            elif op == "truncate" and rng.random() < 0.5:
                del buf[at if rng.random() < 0.5 else rng.randrange(len(buf) + 1) :]
            elif op == "field":
                width = rng.choice([1, 2, 4])
                value = rng.choice([*INTERESTING_INTS, len(buf), len(buf) + 1, len(buf) - at, rng.getrandbits(32)])
                value &= (1 << (8 * width)) - 1
                if at + width <= len(buf):
                    buf[at : at + width] = value.to_bytes(width, rng.choice(["big", "little"]))
            elif op == "splice":
                other = rng.choice(self.seeds)
                start = rng.randrange(max(len(other), 1))
                buf[at:at] = other[start : start + rng.randint(1, 512)]
        if rng.random() < 0.5:
            fix_png_crcs(buf)
        return bytes(buf)

    def options(self) -> dict[str, str]:
        rng = self.rng
        values = {}
        for _ in range(rng.randint(0, 6)):
            key = rng.choice(OPTION_KEYS)
            roll = rng.random()
            if roll < 0.1:
                key = rng.randbytes(rng.randint(1, 8)).decode("latin-1")
            elif roll < 0.3:
                key = (key.upper() if rng.random() < 0.5 else key).replace("_", "-")
                key += " " if rng.random() < 0.3 else ""
            roll = rng.random()
            if roll < 0.5:
                value = rng.choice(OPTION_WORDS)
            elif roll < 0.7:
                value = repr(rng.uniform(-10, 500))
            elif roll < 0.85:
                value = str(rng.randint(-(2**40), 2**40))
            else:
                value = rng.randbytes(rng.randint(0, 12)).decode("latin-1")
            values[key] = value
        return values


# ---------------------------------------------------------------------------------------------
# targets


@contextmanager
def alarm(seconds: float):
    def raise_hang(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, raise_hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Invariant(Exception):
    """A call returned, but what it returned must never be published."""


def run_image(data: bytes, anonymizer: Anonymizer, max_pixels: int, effect: str, fmt: str | None = None) -> str:
    """Outcome of the anonymize call ("ok" or an error code); raises on anything that is a crash."""
    for call in (imageio.probe, imageio.metadata_markers):
        try:
            call(data)
        except AnonymizerError as exc:
            if not str(exc):
                raise Invariant(f"{call.__name__}: {type(exc).__name__} without a message") from exc
    try:
        decoded = imageio.decode(data, max_pixels=max_pixels)
    except AnonymizerError as exc:
        decoded = None
        if not str(exc):
            raise Invariant(f"decode: {type(exc).__name__} without a message") from exc
    values = {"targets": "face", "effect": effect, "max_pixels": str(max_pixels)}
    options = parse_options({**values, "format": fmt} if fmt else values)
    try:
        result = anonymizer.anonymize(data, options)
    except AnonymizerError as exc:
        if not str(exc):
            raise Invariant(f"anonymize: {type(exc).__name__} without a message") from exc
        if decoded is not None and exc.code in ("invalid_image", "unsupported_image"):
            raise Invariant(f"decode accepted what anonymize refused: {exc}") from exc
        return exc.code
    if decoded is None:
        raise Invariant("anonymize published an image that decode refuses")
    leftovers = imageio.metadata_markers(result.data)
    if leftovers:
        raise Invariant(f"published output carries {leftovers}")
    out = imageio.decode(result.data)
    if out.pixels.shape != decoded.pixels.shape:
        raise Invariant(f"output is {out.pixels.shape}, input decodes to {decoded.pixels.shape}")
    return "ok"


def run_options(values: dict[str, str]) -> str:
    try:
        options = parse_options(values, logo=b"logo" if len(values) % 2 else None)
    except AnonymizerError as exc:
        if type(exc).__name__ != "InvalidOptionsError" or not str(exc):
            raise Invariant(f"parse_options raised {type(exc).__name__}: {exc!r}") from exc
        return "options:" + exc.code
    for target in options.targets:
        t = options.for_target(target)
        if t.threshold is not None and not 0.01 <= t.threshold <= 0.99:
            raise Invariant(f"threshold out of range: {t.threshold}")
        if not (0 <= t.margin <= 1 and 1 <= t.strength <= 5 and 2 <= t.blocks <= 16):
            raise Invariant(f"value out of range: {t}")
    return "options:ok"


# ---------------------------------------------------------------------------------------------
# driver


def save_crash(folder: Path, kind: str, payload: bytes, is_options: bool, report: str) -> Path:
    """The input (.bin image bytes or .json option map, replayable with --replay) and its traceback (.txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(payload).hexdigest()[:12]
    path = folder / f"{kind}-{digest}{'.json' if is_options else '.bin'}"
    path.write_bytes(payload)
    path.with_suffix(".txt").write_text(report)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="time budget (default 60; 0: none, use --inputs)")
    parser.add_argument("--inputs", type=int, default=0, help="stop after this many inputs (default 0: no count)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--max-pixels", type=int, default=4_000_000, help="pixel limit per input (default 4 MP)")
    parser.add_argument("--hang", type=float, default=10, help="seconds after which one input is a hang")
    parser.add_argument("--crashes", type=Path, default=ROOT / "build" / "fuzz-crashes")
    parser.add_argument("--replay", type=Path, nargs="+", help="run saved inputs (.bin images, .json options) once")
    parser.add_argument("--verbose", action="store_true", help="keep the native decoders' warnings on stderr")
    args = parser.parse_args(argv)
    if not args.seconds and not args.inputs and not args.replay:
        parser.error("give --seconds or --inputs (or both): an unbounded run never ends")

    out = sys.stdout  # our lines; fd 2 is silenced below unless --verbose
    if not args.verbose:  # libpng/libjpeg/libtiff print to fd 2 on every broken input
        sys.stderr.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)

    rng = random.Random(args.seed)
    seeds = [c.data for c in CORPUS if c.data and not c.options_only and len(c.data) <= 200_000]
    mutator = Mutator(rng, seeds)
    anonymizers = [Anonymizer(), Anonymizer(lambda label: CentreDetector())]
    anonymizers[0].detector("face")  # load the model before the clock starts
    effects = [e for e in EFFECT_NAMES if e != "logo"]

    inputs = [(p.suffix == ".json", p.read_bytes()) for p in args.replay] if args.replay else None

    outcomes: Counter[str] = Counter()
    crashes: dict[str, Path] = {}
    started = time.perf_counter()
    last_note = started
    n = 0
    while True:
        if inputs is not None:
            if n >= len(inputs):
                break
            is_options, payload = inputs[n]
        else:
            if args.seconds and time.perf_counter() - started >= args.seconds:
                break
            if args.inputs and n >= args.inputs:
                break
            is_options = n % 5 == 4
            payload = json.dumps(mutator.options()).encode() if is_options else mutator.mutate(rng.choice(seeds))
        n += 1
        try:
            with alarm(args.hang):
                if is_options:
                    outcome = run_options(json.loads(payload))
                else:
                    fmt = rng.choice(imageio.OUTPUT_FORMATS) if rng.random() < 0.3 else None  # else as the input
                    outcome = run_image(payload, anonymizers[n % 2], args.max_pixels, rng.choice(effects), fmt)
        except Exception as exc:  # the point of the exercise: anything that escapes is a crash
            kind = "hang" if isinstance(exc, Hang) else "invariant" if isinstance(exc, Invariant) else "crash"
            outcome = f"{kind}:{type(exc).__name__}"
            tb = traceback.format_exc()
            where = tb.strip().splitlines()[-3].strip() if len(tb.strip().splitlines()) >= 3 else ""
            signature = f"{outcome} {where}"
            if signature not in crashes:
                crashes[signature] = save_crash(args.crashes, kind, payload, is_options, tb)
                print(f"fuzz: {outcome}: {exc} -> {crashes[signature]}", file=out)
        outcomes[outcome] += 1
        now = time.perf_counter()
        if now - last_note >= 10 and inputs is None:
            print(f"fuzz: {n} inputs, {now - started:.0f} s ...", file=out, flush=True)
            last_note = now

    elapsed = time.perf_counter() - started
    n_crash = sum(v for k, v in outcomes.items() if k.split(":")[0] in ("crash", "invariant", "hang"))
    n_ok = outcomes["ok"] + outcomes["options:ok"]
    n_err = n - n_ok - n_crash
    for name, count in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {count:7d}  {name}", file=out)
    print(f"fuzz: {n} inputs in {elapsed:.0f} s, {n_ok} ok, {n_err} clean errors, {n_crash} crashes"
          + (f" ({len(crashes)} distinct, saved in {args.crashes})" if crashes else ""), file=out)  # fmt: skip
    return 1 if n_crash else 0


if __name__ == "__main__":
    sys.exit(main())
