"""The ``anonymize`` command: the library on a laptop, with the same options as the service.

    anonymize INPUT... -o OUTDIR [options]      anonymize files, folders and globs
    anonymize detect PATH... --jsonl            one JSON object per image on stdout
    anonymize eval COCO_DIR                     recall / precision / AP50 per class
    anonymize local-run [INPUT...] -o OUTDIR    the whole S3 flow on moto's S3 server
    anonymize serve                             the API on http://127.0.0.1:8080
    anonymize backfill s3://BUCKET/PREFIX       what a bucket already holds, with S3 Batch Operations

Options come from the option table (``anonymizer.options``): a flag per key, ``--set KEY=VALUE``,
and ``ANONYMIZER_<KEY>`` environment defaults, in that order of precedence (flags win).

Exit codes: 0 every image done; 3 some images failed (partial); 1 none done, or a server could
not start; 2 bad usage or options (nothing was done). Problems are one line on stderr, never a
traceback.

A subcommand is one entry of :data:`COMMANDS`: a function that adds its arguments and a
function that runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from anonymizer.errors import AnonymizerError, InvalidOptionsError
from anonymizer.options import (
    OPTIONS,
    SPECS,
    Options,
    OptionSpec,
    cli_flag,
    options_from_env,
    parse_options,
    parse_settings,
)
from anonymizer.video import DETECT_EVERY

from . import backfill_cli
from .files import SUFFIX_FOR_FORMAT, InputFile, OutputClaims, expand_inputs, output_name, plan_inputs, write_atomically

__all__ = ["COMMANDS", "EXIT_FAILED", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "SUFFIX_FOR_FORMAT", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
JOBS_MAX = 16  # images in flight; each holds its decoded pixels and buffers


class CommandError(Exception):
    """A problem worth one line on stderr and an exit code (2 unless said otherwise)."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Command:
    """One subcommand: what it accepts and what it does."""

    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv and argv[0] in COMMANDS and argv[0] != "run" else "run"
    if name != "run":
        argv = argv[1:]
    args = build_parser(name).parse_args(argv)  # exits 2 with argparse's one-line message on bad usage
    try:
        return COMMANDS[name].run(args)
    except (CommandError, InvalidOptionsError) as exc:
        print(f"anonymize: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USAGE)
    except KeyboardInterrupt:
        print("anonymize: interrupted", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (the full usage is a screen long) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(name: str) -> argparse.ArgumentParser:
    """The argument parser of one subcommand (``run`` is the default command)."""
    command = COMMANDS[name]
    parser = _Parser(
        prog="anonymize" if name == "run" else f"anonymize {name}",
        description=__doc__ if name == "run" else command.description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.arguments(parser)
    return parser


# --- argument types and option flags --------------------------------------------------------------


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _score(raw: str) -> float:
    """A detection score floor, within the threshold option's range."""
    try:
        return SPECS["threshold"].parse(raw, "score")
    except InvalidOptionsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_option_flags(parser: argparse.ArgumentParser, effects: bool = True) -> None:
    """One flag per key of the option table (``--face-min-size`` ...); detect/eval get the detection ones."""
    group = parser.add_argument_group("options (also --set KEY=VALUE and ANONYMIZER_<KEY> environment defaults)")
    for spec in OPTIONS:
        if not (effects or spec.detection):
            continue
        for key in spec.flat_keys():
            if "." in key:
                shown = spec.key in _SHOWN_PER_TARGET
                text = f"{spec.key} for {key.split('.')[0]}s" if shown else argparse.SUPPRESS
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
    return f" [{spec.minimum:g}..{spec.maximum:g}]" if spec.minimum is not None else ""


def _options_from_args(args: argparse.Namespace) -> Options:
    """Environment defaults (ANONYMIZER_*), then the flags, then --set; the logo file is checked here."""
    values = {key[len("option:") :]: v for key, v in vars(args).items() if key.startswith("option:") and v is not None}
    values.update(parse_settings(getattr(args, "set", [])))
    logo = _read_logo(args.logo) if getattr(args, "logo", None) else None
    options = parse_options(values, logo=logo, defaults=options_from_env(os.environ))
    if logo is not None and not any(options.for_target(t).effect == "logo" for t in options.targets):
        raise CommandError("--logo is only used with --effect logo (or --face-effect/--plate-effect logo)")
    return options


def _read_logo(path: Path) -> bytes:
    """The logo's bytes, refused up front (exit 2) unless the library can use them as a logo."""
    from anonymizer.effects import load_logo

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read logo {path}: {exc.strerror}") from None
    try:
        load_logo(data)  # the library's own check, once, instead of a failure per image
    except InvalidOptionsError as exc:
        raise CommandError(f"--logo {path}: {exc}") from None
    return data


def _output_folder(path: Path) -> Path:
    """The output folder, created now: a file in its place or an impossible path is a usage error."""
    if path.exists() and not path.is_dir():
        raise CommandError(f"-o {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"-o {path}: cannot create the folder ({exc.strerror})") from None
    return path


# --- anonymize (the default command) ---------------------------------------------------------------


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image or video files, folders or globs")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--audio", choices=("keep", "drop"), default="keep", help="videos: audio copied or dropped")
    parser.add_argument(
        "--detect-every",
        type=_int_between(1, 10),
        default=DETECT_EVERY,
        help="videos: detector on every k-th frame, and on each frame where objects come or go (default %(default)s)",
    )
    parser.add_argument("--report", action="store_true", help="also write NAME.report.json beside each output")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--jobs",
        type=_int_between(1, JOBS_MAX),
        default=2,
        help=f"images in flight at once, 1..{JOBS_MAX} (default 2; memory grows with it)",
    )
    _add_option_flags(parser)


@dataclass
class RunSummary:
    """What a run did, for the closing lines: totals per class, time, images with nothing found."""

    targets: tuple[str, ...]
    done: int = 0
    failed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    nothing_found: list[str] = field(default_factory=list)

    def add(self, name: str, counts: dict[str, int]) -> None:
        self.done += 1
        for label in self.targets:
            self.counts[label] = self.counts.get(label, 0) + int(counts.get(label, 0))
        if not any(counts.get(label, 0) for label in self.targets):
            self.nothing_found.append(name)

    def lines(self, total: int, output: Path, seconds: float) -> list[str]:
        found = ", ".join(f"{self.counts.get(t, 0)} {t}(s)" for t in self.targets)
        head = f"anonymized {self.done} of {total} image(s) into {output} in {seconds:.1f} s"
        lines = [head + (f"; {self.failed} failed" if self.failed else "") + (f"; found {found}" if self.done else "")]
        if self.nothing_found:
            shown = ", ".join(self.nothing_found[:10])
            more = f" and {len(self.nothing_found) - 10} more" if len(self.nothing_found) > 10 else ""
            lines.append(f"nothing found in {len(self.nothing_found)} image(s): {shown}{more}")
        return lines


def _cmd_run(args: argparse.Namespace) -> int:
    from anonymizer.pipeline import Anonymizer
    from anonymizer.video.pipeline import VideoSettings

    from .video import is_video_file, run_video

    options = _options_from_args(args)
    output = _output_folder(args.output)
    plan = plan_inputs(args.inputs)
    videos = [item for item in plan if is_video_file(item.path)]  # one at a time, after the images
    plan = [item for item in plan if item not in videos]
    show_progress = args.progress if args.progress is not None else (sys.stderr.isatty() and len(plan) > 1)
    claims = OutputClaims()
    summary = RunSummary(options.targets)
    anonymizer = Anonymizer()
    started = time.perf_counter()

    def one(item: InputFile) -> dict[str, int] | str:
        """Anonymize one file: its counts, or the error message (nothing is written then)."""
        try:
            result = anonymizer.anonymize(_read(item.path), options)
            target = output / output_name(item.relative, result.format)
            claims.take(target, item.path)
            write_atomically(target, result.data)
            if args.report:
                report = {"source": _shown_path(item), **result.report}
                write_atomically(target.with_name(target.name + ".report.json"), json.dumps(report, indent=2).encode())
        except AnonymizerError as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot write the output: {exc.strerror}"
        return dict(result.report.get("counts", {}))

    if plan:
        anonymizer.preload(options.targets)  # once, before the images in flight would race to load
    # A few images in flight: one image's decode, effects and encode (one core each) overlap
    # another's network runs, which keep every core busy on their own.
    with ThreadPoolExecutor(args.jobs) as pool:
        for index, (item, outcome) in enumerate(zip(plan, pool.map(one, plan), strict=True), 1):
            if isinstance(outcome, str):
                summary.failed += 1
                print(f"anonymize: {item.path}: {outcome}", file=sys.stderr)  # as the user named it
            else:
                summary.add(str(item.path), outcome)
            if show_progress:
                _progress(index, len(plan), started)
    if show_progress:
        print(file=sys.stderr)
    for item in videos:
        settings = VideoSettings(audio=args.audio, detect_every=args.detect_every)
        bar = args.progress if args.progress is not None else sys.stderr.isatty()
        outcome = run_video(
            item, output, options, settings, anonymizer=anonymizer, claims=claims, report=args.report, progress=bar
        )
        if isinstance(outcome, str):
            summary.failed += 1
            print(f"anonymize: {item.path}: {outcome}", file=sys.stderr)
        else:
            summary.add(str(item.path), outcome)
    for line in summary.lines(len(plan) + len(videos), output, time.perf_counter() - started):
        print(line, file=sys.stderr)
    return _exit_code(summary.done, summary.failed)


def _shown_path(item: InputFile) -> str:
    """How an input is named in messages and reports: relative to the working folder when it is
    inside it, else relative to the input folder it came from (no absolute paths in reports)."""
    path = item.path.absolute()
    cwd = Path.cwd()
    return path.relative_to(cwd).as_posix() if path.is_relative_to(cwd) else item.relative


# --- detect ---------------------------------------------------------------------------------------


def _detect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Detections as JSON lines on stdout."
    parser.add_argument("inputs", nargs="+", help="image files, folders or globs")
    parser.add_argument("--jsonl", action="store_true", help="one JSON object per image (the default and only format)")
    parser.add_argument("--min-score", type=_score, help="report detections down to this score (0.01..0.99)")
    _add_option_flags(parser, effects=False)


def _cmd_detect(args: argparse.Namespace) -> int:
    from anonymizer.pipeline import Anonymizer

    options = _options_from_args(args)
    anonymizer = Anonymizer()
    ok = failed = 0
    for item in args.inputs:
        single = Path(item).is_file()
        files = [Path(item)] if single else [p for p, _ in expand_inputs([item])]
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


# --- eval -----------------------------------------------------------------------------------------


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Evaluate against a COCO folder (annotations.json and images/)."
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


def _crop_writer(folder: Path, load: Callable) -> Callable:
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


def _split_ids(path: Path, key: str | None) -> list:
    """The image ids of a split file (``--ids``, optionally a dotted ``--ids-key`` inside it)."""
    try:
        data = json.loads(path.read_text())
        for part in key.split(".") if key else []:
            data = data[part]
    except OSError as exc:
        raise CommandError(f"--ids {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise CommandError(f"--ids {path}: no list of image ids at {key or 'the top level'}") from None
    if not isinstance(data, list):
        raise CommandError(f"--ids {path}: no list of image ids at {key or 'the top level'}")
    return data


def _cmd_eval(args: argparse.Namespace) -> int:
    from anonymizer.pipeline import Anonymizer

    from .evaluation import evaluate, load_coco

    options = _options_from_args(args)
    if not (args.coco_dir / "annotations.json").is_file():
        raise CommandError(f"{args.coco_dir}: not a labelled set (no annotations.json in it; COCO json expected)")
    ids = _split_ids(args.ids, args.ids_key) if args.ids else None
    try:
        truths = load_coco(args.coco_dir, ids)
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"{args.coco_dir}/annotations.json: not COCO json ({type(exc).__name__}: {exc})") from None
    anonymizer = Anonymizer()

    def load(truth):
        return _imread(truth.path)

    if args.resize:  # as a camera of that resolution would give the scene
        truths, load = _resized(truths, args.resize)
    labels = [t for t in options.targets if any(t in truth.boxes for truth in truths)]
    if not labels:
        raise CommandError(f"{args.coco_dir} has no objects of the chosen targets {options.targets}")
    # Detection runs for every requested target, exactly as in production (face+plate share a
    # trunk); only the labelled classes are scored.
    thresholds = {t: options.for_target(t).threshold or anonymizer.detector(t).card.threshold for t in options.targets}
    floor = min(0.05, *thresholds.values())
    started = time.perf_counter()
    try:
        results = evaluate(
            truths,
            lambda truth: anonymizer.detect_pixels(load(truth), options, floor),
            labels,
            thresholds,
            _crop_writer(args.unmatched, load) if args.unmatched else None,
        )
    except AnonymizerError as exc:
        raise CommandError(f"{args.coco_dir}: {exc}", EXIT_FAILED) from None
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
    except ValueError:
        raise CommandError(f"--resize wants WIDTHxHEIGHT, got {size!r}") from None
    if not (16 <= width <= 10000 and 16 <= height <= 10000):
        raise CommandError(f"--resize {size}: each side must be 16 to 10000 px")
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


# --- local-run and serve ------------------------------------------------------------------------------


def _local_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the whole S3 flow locally: moto's S3 server, buckets, upload, the real S3 function, download. "
        "Without inputs it uses an embedded sample (a real face from scikit-image). The functions' own logs "
        "go to OUTDIR/local-run.log."
    )
    parser.add_argument("inputs", nargs="*", help="image files, folders or globs")
    parser.add_argument("-o", "--output", type=Path, default=Path("out"), help="where results land (default ./out)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="options as object metadata")
    parser.add_argument("--log", type=Path, help="the functions' own log (default OUTDIR/local-run.log)")


def _cmd_local_run(args: argparse.Namespace) -> int:
    from .emulator import run_local_s3_flow

    values = parse_settings(args.set)
    parse_options(values, defaults=options_from_env(os.environ))  # fail early, before a server starts
    output = _output_folder(args.output)
    missing = [item for item in args.inputs if not any(True for _ in _existing(item))]
    if missing:
        raise CommandError(f"no such file or folder: {', '.join(missing)}")
    log = args.log or output / "local-run.log"
    from .video import is_video_file, run_video_workflow

    videos = [Path(item) for item in args.inputs if Path(item).is_file() and is_video_file(Path(item))]
    images = [Path(item) for item in args.inputs if Path(item) not in videos]
    summary = {"ok": 0, "failed": 0}
    if images or not videos:  # no inputs at all: the embedded sample image
        summary = run_local_s3_flow(images, output, values or None, log_path=log)
    if videos:  # the video state machine's own definition, walked locally
        done = run_video_workflow(videos, output, values or None)
        summary = {k: summary.get(k, 0) + done[k] for k in ("ok", "failed")}
    if not summary.get("ok"):
        return EXIT_FAILED
    return EXIT_OK if not summary.get("failed") else EXIT_PARTIAL


def _existing(item: str) -> Iterable[Path]:
    return (path for path, _ in expand_inputs([item]) if path.is_file())


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "The API handler behind a local server (and moto for the upload flow)."
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_int_between(0, 65535), default=8080, help="0: any free port (default 8080)")
    parser.add_argument(
        "--log",
        type=Path,
        help="the functions' own log lines and metrics (default: anonymize-serve.log in the temp folder)",
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    log = args.log or Path(tempfile.gettempdir()) / "anonymize-serve.log"
    try:
        serve(args.host, args.port, log)
    except OSError as exc:
        raise CommandError(f"serve: cannot listen on {args.host}:{args.port}: {exc.strerror}", EXIT_FAILED) from None
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
    from anonymizer import imageio

    return imageio.decode(_read(path)).pixels


def _progress(done: int, total: int, started: float) -> None:
    width = 30
    filled = int(width * done / total)
    rate = done / max(time.perf_counter() - started, 1e-6)
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:.1f} img/s", end="", file=sys.stderr)


COMMANDS: dict[str, Command] = {
    "run": Command(_run_arguments, _cmd_run, "Anonymize files, folders and globs into an output folder."),
    "detect": Command(_detect_arguments, _cmd_detect, "Detections as JSON lines on stdout."),
    "eval": Command(_eval_arguments, _cmd_eval, "Recall, precision and AP50 against a COCO folder."),
    "local-run": Command(_local_run_arguments, _cmd_local_run, "The whole S3 flow locally, on moto."),
    "serve": Command(_serve_arguments, _cmd_serve, "The API on localhost."),
    "backfill": Command(backfill_cli.arguments, backfill_cli.run, backfill_cli.DESCRIPTION),
}

if __name__ == "__main__":
    sys.exit(main())
