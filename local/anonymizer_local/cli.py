"""The ``anonymize`` command: the library on a laptop, with the same options as the service.

    anonymize INPUT... -o OUTDIR [options]      anonymize files, folders and globs
    anonymize detect PATH... --jsonl            one JSON object per image on stdout
    anonymize eval COCO_DIR                     recall / precision / AP50 per class
    anonymize local-run [INPUT...] -o OUTDIR    the whole S3 flow on moto's S3 server
    anonymize serve                             the API on http://127.0.0.1:8080

Exit codes: 0 every image done; 3 some images failed (partial); 1 none done;
2 bad usage or options.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import AnonymizerError, InvalidOptionsError
from .options import OPTIONS, Options, OptionSpec, cli_flag, options_from_env, parse_options, parse_settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
SUFFIX_FOR_FORMAT = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp", "tiff": ".tiff"}
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
SUBCOMMANDS = ("detect", "eval", "local-run", "serve")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "run"
    if command != "run":
        argv = argv[1:]
    parser = _PARSERS[command]()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[command](args)
    except InvalidOptionsError as exc:
        print(f"anonymize: {exc}", file=sys.stderr)
        return EXIT_USAGE


# --- argument parsing -------------------------------------------------------------------------


def _add_option_flags(parser: argparse.ArgumentParser, effects: bool = True) -> None:
    """One flag per key of the option table (``--face-min-size`` ...); detect/eval get the detection ones."""
    group = parser.add_argument_group("options (also --set KEY=VALUE and ANONYMIZER_<KEY> environment defaults)")
    for spec in OPTIONS:
        if not (effects or spec.detection):
            continue
        for key in spec.flat_keys():
            if "." in key:
                text = (
                    argparse.SUPPRESS if spec.key not in _SHOWN_PER_TARGET else f"{spec.key} for {key.split('.')[0]}s"
                )
            else:
                text = spec.help + _range_text(spec)
            group.add_argument(cli_flag(key), dest=_dest(key), metavar=_metavar(spec), help=text)
    if effects:
        group.add_argument("--logo", type=Path, help="PNG (with alpha) for --effect logo")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any option, e.g. face.blocks=6")


_SHOWN_PER_TARGET = ("effect", "threshold", "min_size")  # the others' per-target flags work but stay out of --help


def _dest(key: str) -> str:
    return "option:" + key


def _metavar(spec: OptionSpec) -> str:
    return "|".join(spec.choices) if spec.type == "string" and spec.choices else spec.key.upper()


def _range_text(spec: OptionSpec) -> str:
    if spec.minimum is not None:
        return f" [{spec.minimum:g}..{spec.maximum:g}]"
    return ""


def _options_from_args(args: argparse.Namespace) -> Options:
    """Environment defaults (ANONYMIZER_*), then the flags, then --set; the logo file is checked here."""
    values = {key[len("option:") :]: v for key, v in vars(args).items() if key.startswith("option:") and v is not None}
    values.update(parse_settings(getattr(args, "set", [])))
    logo = None
    if getattr(args, "logo", None):
        logo = _read_logo(args.logo)
    options = parse_options(values, logo=logo, defaults=options_from_env(os.environ))
    if logo is not None and not any(options.for_target(t).effect == "logo" for t in options.targets):
        raise InvalidOptionsError("--logo is only used with --effect logo (or --face-effect/--plate-effect logo)")
    return options


def _read_logo(path: Path) -> bytes:
    """The logo's bytes, refused up front (exit 2) unless they are a PNG with an alpha channel."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidOptionsError(f"cannot read logo {path}: {exc.strerror}") from None
    from .effects import load_logo

    try:
        load_logo(data)  # the library's own check, once, instead of a failure per image
    except InvalidOptionsError as exc:
        raise InvalidOptionsError(f"--logo {path}: {exc}") from None
    return data


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anonymize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders or globs")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--report", action="store_true", help="also write NAME.report.json beside each output")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--jobs", type=int, default=2, help="images in flight at once (default 2; memory grows with it)"
    )
    _add_option_flags(parser)
    return parser


def _detect_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anonymize detect", description="Detections as JSON lines on stdout.")
    parser.add_argument("inputs", nargs="+", help="image files, folders or globs")
    parser.add_argument("--jsonl", action="store_true", help="one JSON object per image (the default and only format)")
    parser.add_argument("--min-score", type=float, help="report detections down to this score")
    _add_option_flags(parser, effects=False)
    return parser


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anonymize eval", description="Evaluate against a COCO folder.")
    parser.add_argument("coco_dir", type=Path, help="folder with annotations.json and images/")
    parser.add_argument("--ids", type=Path, help="JSON file with a list of image ids to evaluate (a split)")
    parser.add_argument("--ids-key", help="dotted path of the list inside --ids, e.g. web-cars.holdout_image_ids")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--unmatched", type=Path, metavar="DIR", help="write crops of unmatched detections and missed objects here"
    )
    parser.add_argument(
        "--resize", metavar="WxH", help="evaluate every image resized to this size, labels along (e.g. 1920x1080)"
    )
    _add_option_flags(parser, effects=False)
    return parser


def _local_run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anonymize local-run",
        description="Run the whole S3 flow locally: moto's S3 server, buckets, upload, the real S3 function, "
        "download. Without inputs it uses an embedded sample (a real face from scikit-image).",
    )
    parser.add_argument("inputs", nargs="*", help="image files, folders or globs")
    parser.add_argument("-o", "--output", type=Path, default=Path("out"), help="where results land (default ./out)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="options as object metadata")
    return parser


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anonymize serve", description="The API handler behind a local server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    return parser


# --- commands ---------------------------------------------------------------------------------


def expand_inputs(inputs: list[str]) -> Iterator[tuple[Path, Path]]:
    """(file, output path relative to the output folder) for files, folders and globs."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
                yield file, file.relative_to(path)
        elif path.is_file():
            yield path, Path(path.name)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                yield path, Path(path.name)  # reported as missing by the caller
            for match in matches:
                if Path(match).is_file():
                    yield Path(match), Path(Path(match).name)


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import Anonymizer

    options = _options_from_args(args)
    anonymizer = Anonymizer()
    items = list(expand_inputs(args.inputs))
    show_progress = args.progress if args.progress is not None else (sys.stderr.isatty() and len(items) > 1)
    done = failed = 0
    started = time.perf_counter()

    def one(item: tuple[Path, Path]) -> str | None:
        """Anonymize one file; the error message if it failed (nothing is written then)."""
        source, relative = item
        try:
            result = anonymizer.anonymize(_read(source), options)
            target = (args.output / relative).with_suffix(SUFFIX_FOR_FORMAT[result.format])
            if target.resolve() == source.resolve():
                raise AnonymizerError("output would overwrite the original; choose another output folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(target, result.data)
            if args.report:
                report = {"source": str(source), **result.report}
                _write_atomically(target.with_name(target.name + ".report.json"), json.dumps(report, indent=2).encode())
        except AnonymizerError as exc:
            return str(exc)
        return None

    if items:
        anonymizer.preload(options.targets)  # once, before the images in flight would race to load
    # A few images in flight: one image's decode, effects and encode (one core each) overlap
    # another's network runs, which keep every core busy on their own.
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for index, ((source, _), error) in enumerate(zip(items, pool.map(one, items), strict=True), 1):
            if error is None:
                done += 1
            else:
                failed += 1
                print(f"anonymize: {source}: {error}", file=sys.stderr)
            if show_progress:
                _progress(index, len(items), started)
    if show_progress:
        print(file=sys.stderr)
    print(f"anonymized {done} of {len(items)} image(s) into {args.output}" + (f"; {failed} failed" if failed else ""),
          file=sys.stderr)  # fmt: skip
    return _exit_code(done, failed)


def _cmd_detect(args: argparse.Namespace) -> int:
    from .pipeline import Anonymizer

    options = _options_from_args(args)
    anonymizer = Anonymizer()
    ok = failed = 0
    for item in args.inputs:
        files = (
            [p for p, _ in expand_inputs([item])] if Path(item).is_dir() or not Path(item).exists() else [Path(item)]
        )
        for path in files:
            shown = str(path) if path != Path(item) else item
            try:
                report = anonymizer.detect(_read(path), options, min_score=args.min_score)
                line = {
                    "image": shown,
                    "width": report["image"]["width"],
                    "height": report["image"]["height"],
                    "detections": report["detections"],
                }
                ok += 1
            except AnonymizerError as exc:
                line = {"image": shown, "error": exc.code, "message": str(exc)}
                failed += 1
            print(json.dumps(line), flush=True)
    return _exit_code(ok, failed)


def _crop_writer(folder: Path, load):
    """Crops (with context, score in the name) of false positives and misses, for auditing by eye."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)

    def write(truth, label: str, false_positives: list, missed) -> None:
        if not false_positives and not len(missed):
            return
        image = load(truth)
        boxes = [(f"fp-{d.score:.2f}", d.box) for d in false_positives] + [("missed", b) for b in missed]
        for k, (kind, (x1, y1, x2, y2)) in enumerate(boxes):
            ox, oy = max(0, int(x1 - (x2 - x1) / 2)), max(0, int(y1 - (y2 - y1)))
            crop = image[oy : int(y2 + (y2 - y1)), ox : int(x2 + (x2 - x1) / 2)].copy()
            cv2.rectangle(crop, (int(x1) - ox, int(y1) - oy), (int(x2) - ox, int(y2) - oy), (0, 255, 255), 1)
            cv2.imwrite(str(folder / f"{truth.image_id}-{label}-{k}-{kind}.png"), crop)

    return write


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, load_coco
    from .pipeline import Anonymizer

    options = _options_from_args(args)
    anonymizer = Anonymizer()
    ids = None
    if args.ids:
        data = json.loads(args.ids.read_text())
        for key in args.ids_key.split(".") if args.ids_key else []:
            data = data[key]
        ids = data
    truths = load_coco(args.coco_dir, ids)

    def load(truth):
        return _imread(truth.path)

    if args.resize:  # as a camera of that resolution would give the scene
        truths, load = _resized(truths, args.resize)
    labels = [t for t in options.targets if any(t in truth.boxes for truth in truths)]
    if not labels:
        raise InvalidOptionsError(f"{args.coco_dir} has no objects of the chosen targets {options.targets}")
    # Detection runs for every requested target, exactly as in production (face+plate share a
    # trunk); only the labelled classes are scored.
    thresholds = {t: options.for_target(t).threshold or anonymizer.detector(t).card.threshold for t in options.targets}
    floor = min(0.05, *thresholds.values())
    started = time.perf_counter()
    results = evaluate(
        truths,
        lambda truth: anonymizer.detect_pixels(load(truth), options, floor),
        labels,
        thresholds,
        _crop_writer(args.unmatched, load) if args.unmatched else None,
    )
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps({"dataset": str(args.coco_dir), "seconds": round(seconds, 1), "results": results}, indent=2))
        return EXIT_OK
    print(f"{args.coco_dir} ({len(truths)} images, {seconds:.1f} s)")
    print(f"{'class':<6} {'objects':>7} {'thr':>5} {'R@0.5':>6} {'R@0.3':>6} {'P@0.5':>6} {'AP50':>6}")
    for label, r in results.items():
        print(f"{label:<6} {r['objects']:>7} {r['threshold']:>5.2f} {r['recall@0.5']:>6.3f} {r['recall@0.3']:>6.3f} "
              f"{r['precision@0.5']:>6.3f} {r['AP50']:>6.3f}")  # fmt: skip
    return EXIT_OK


def _resized(truths: list, size: str):
    """Truths with their boxes scaled to ``WxH``, and the loader that resizes their images alike."""
    import dataclasses

    import cv2
    import numpy as np

    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError as exc:
        raise InvalidOptionsError(f"--resize wants WIDTHxHEIGHT, got {size!r}") from exc
    if not (16 <= width <= 10000 and 16 <= height <= 10000):
        raise InvalidOptionsError(f"--resize {size}: each side must be 16 to 10000 px")
    scaled = []
    for t in truths:
        factors = np.array([width / t.width, height / t.height] * 2, np.float32)
        boxes = {label: b * factors for label, b in t.boxes.items()}
        scaled.append(dataclasses.replace(t, width=width, height=height, boxes=boxes))

    def load(truth):
        image = _imread(truth.path)
        shrink = width * height < image.shape[0] * image.shape[1]
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    return scaled, load


def _cmd_local_run(args: argparse.Namespace) -> int:
    from .aws.local import run_local_s3_flow

    values = parse_settings(args.set)
    parse_options(values)  # fail early, before a server starts
    # prints one line per object
    summary = run_local_s3_flow([Path(item) for item in args.inputs], args.output, values or None)
    return EXIT_OK if not summary.get("failed") else EXIT_PARTIAL


def _cmd_serve(args: argparse.Namespace) -> int:
    from .aws.local import serve

    serve(args.host, args.port)
    return EXIT_OK


# --- helpers ----------------------------------------------------------------------------------


def _exit_code(done: int, failed: int) -> int:
    if failed == 0 and done > 0:
        return EXIT_OK
    return EXIT_PARTIAL if done else EXIT_FAILED


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AnonymizerError("no such file") from None
    except OSError as exc:
        raise AnonymizerError(f"cannot read: {exc.strerror}") from None


def _imread(path: Path):
    from . import imageio

    return imageio.decode(_read(path)).pixels


def _write_atomically(target: Path, data: bytes) -> None:
    """Never leave a half-written image behind: write a temporary file, then rename."""
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_bytes(data)
    tmp.replace(target)


def _progress(done: int, total: int, started: float) -> None:
    width = 30
    filled = int(width * done / total)
    rate = done / max(time.perf_counter() - started, 1e-6)
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:.1f} img/s", end="", file=sys.stderr)


_PARSERS = {
    "run": _run_parser,
    "detect": _detect_parser,
    "eval": _eval_parser,
    "local-run": _local_run_parser,
    "serve": _serve_parser,
}
_COMMANDS = {
    "run": _cmd_run,
    "detect": _cmd_detect,
    "eval": _cmd_eval,
    "local-run": _cmd_local_run,
    "serve": _cmd_serve,
}

if __name__ == "__main__":
    sys.exit(main())
