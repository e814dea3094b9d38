"""The bad-input corpus (tests/badinput.py) through the library and the CLI: every case has one defined outcome.

ok    -> a Result whose bytes decode to the upright size, carry no metadata, keep alpha iff the input had it
error -> exactly the expected AnonymizerError subclass, a message, its HTTP status, and no output at all
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from badinput import CORPUS, FACE_ONLY, IMAGE_CASES, Case

from anonymizer import imageio
from anonymizer.errors import AnonymizerError
from anonymizer.options import parse_options
from anonymizer.pipeline import Anonymizer, Result
from anonymizer_local.cli import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, SUFFIX_FOR_FORMAT, main

TALLY: dict[str, Counter] = {"library": Counter(), "cli": Counter()}


@pytest.fixture(scope="module")
def anonymizer() -> Anonymizer:
    return Anonymizer()


@pytest.fixture(scope="module", autouse=True)
def corpus_summary(request):
    """One line at the end of the module: how many corpus cases were tried and passed, per entry point."""
    yield
    parts = [f"{kind} {t['passed']}/{t['tried']} passed" for kind, t in TALLY.items() if t["tried"]]
    expects = Counter(c.expect for c in CORPUS)
    line = f"bad-input corpus: {len(CORPUS)} cases ({expects['ok']} ok, {expects['error']} error); " + ", ".join(parts)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
            reporter.write_line("")
            reporter.write_line(line)


def _ids(case: Case) -> str:
    return case.name


def check_output(case: Case, data: bytes) -> None:
    """What every published image must satisfy."""
    assert imageio.metadata_markers(data) == [], case.name
    decoded = imageio.decode(data)
    height, width = decoded.pixels.shape[:2]
    assert (width, height) == case.size, case.name
    info = imageio.probe(data)
    assert (info.width, info.height) == case.size and not info.animated
    assert (decoded.alpha is not None) == case.alpha, case.name
    if "format" in case.options:
        assert decoded.format == parse_options(case.options).output_format


def check_error(case: Case, exc: BaseException) -> None:
    assert type(exc) is case.error, f"{case.name}: expected {case.error.__name__}, got {type(exc).__name__}: {exc}"
    assert str(exc).strip(), case.name
    assert exc.http_status == case.status and exc.code and exc.code != AnonymizerError.code


def run_library(anonymizer: Anonymizer, case: Case) -> Result | BaseException:
    try:
        return anonymizer.anonymize(case.data, parse_options(case.options))
    except AnonymizerError as exc:
        return exc
    # any other exception propagates: that is a crash, and the test fails with its traceback


# ---------------------------------------------------------------------------------------------
# the corpus itself


def test_corpus_covers_the_issue() -> None:
    assert len(CORPUS) >= 30
    names = {c.name for c in CORPUS}
    for needed in (
        "empty",
        "truncated_jpeg_half",
        "truncated_png_half",
        "random_bytes_jpg",
        "png_named_jpg",
        "bomb_png_50000x50000",
        "thin_1x20000_png",
        "tall_20000x1_png",
        "one_pixel_png",
        "grayscale_png",
        "rgba_png",
        "png_16bit",
        "cmyk_jpeg",
        "progressive_jpeg",
        "animated_gif",
        "animated_webp",
        "apng",
        *(f"exif_orientation_{o}" for o in range(1, 9)),
        "exif_garbage",
        "exif_huge_60k",
        "exif_gps_jpeg",
        "options_threshold_above_range",
    ):
        assert needed in names, needed
    assert CORPUS[0].name == "empty" and CORPUS[0].data == b""
    bomb = next(c for c in CORPUS if c.name == "bomb_png_50000x50000")
    assert len(bomb.data) < 2000 and imageio.probe(bomb.data).width == 50_000
    huge = next(c for c in CORPUS if c.name == "exif_huge_60k")
    assert len(huge.data) > 60_000
    for case in CORPUS:
        assert Path(case.filename).stem == case.name  # unique output names in a batch
        assert Path(case.filename).suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def test_misleading_names_really_mislead() -> None:
    """Most valid images carry another format's extension, so nothing can trust a name."""
    suffix_format = {".jpg": "jpeg", ".png": "png", ".webp": "webp", ".bmp": "bmp", ".tif": "tiff", ".tiff": "tiff",
                     ".gif": "gif"}  # fmt: skip
    valid = [c for c in CORPUS if c.expect == "ok" and not c.options_only]
    wrong = [c for c in valid if imageio.probe(c.data).format != suffix_format[Path(c.filename).suffix]]
    assert len(wrong) >= 0.9 * len(valid)


# ---------------------------------------------------------------------------------------------
# library


@pytest.mark.parametrize("case", CORPUS, ids=_ids)
def test_library(anonymizer: Anonymizer, case: Case) -> None:
    TALLY["library"]["tried"] += 1
    started = time.perf_counter()
    outcome = run_library(anonymizer, case)
    elapsed = time.perf_counter() - started
    if case.expect == "ok":
        assert isinstance(outcome, Result), f"{case.name}: {type(outcome).__name__}: {outcome}"
        check_output(case, outcome.data)
        assert outcome.content_type == imageio.CONTENT_TYPES[outcome.format]
        assert (outcome.report["image"]["width"], outcome.report["image"]["height"]) == case.size
    else:
        assert isinstance(outcome, BaseException), f"{case.name}: expected {case.error.__name__}, got a Result"
        check_error(case, outcome)
    if case.name.startswith("bomb_"):
        assert elapsed < 0.5, f"{case.name} took {elapsed:.2f} s: refused from the header, before decoding?"
    TALLY["library"]["passed"] += 1


# ---------------------------------------------------------------------------------------------
# CLI


def _write_inputs(cases: list[Case], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in cases:
        path = folder / case.filename
        path.write_bytes(case.data)
        paths.append(path)
    return paths


def _set_flags(options: dict[str, str]) -> list[str]:
    return [f"--set={key}={value}" for key, value in options.items()]


def _outputs(folder: Path) -> dict[str, Path]:
    """Output files by stem; there must be no half-written (.part) file among them."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".part")]
    return {p.stem: p for p in files}


@pytest.mark.parametrize("case", CORPUS, ids=_ids)
def test_cli(case: Case, tmp_path: Path, capsys) -> None:
    TALLY["cli"]["tried"] += 1
    (source,) = _write_inputs([case], tmp_path / "in")
    out = tmp_path / "out"
    code = main([str(source), "-o", str(out), *_set_flags(case.options)])
    err = capsys.readouterr().err
    files = list(out.rglob("*")) if out.exists() else []
    if case.expect == "ok":
        assert code == EXIT_OK, err
        (written,) = files
        result_format = imageio.probe(written.read_bytes()).format
        assert written.name == case.name + SUFFIX_FOR_FORMAT[result_format]
        check_output(case, written.read_bytes())
    else:
        assert files == [], f"{case.name}: an error case left output behind: {files}"
        if case.options_only:
            assert code == EXIT_USAGE, err  # bad options: refused before any image is read
        else:
            assert code == EXIT_FAILED, err
            assert str(source) in err
        messages = [line for line in err.splitlines() if line.startswith("anonymize: ")]
        assert len(messages) == 1 and len(messages[0]) > len("anonymize: ") + 10, err
    TALLY["cli"]["passed"] += 1


BATCH = [c for c in IMAGE_CASES if c.options == FACE_ONLY]


def test_cli_batch_of_the_whole_corpus_is_partial(tmp_path: Path, capsys) -> None:
    """All image cases in one call: every good one written, no bad one, exit 3 (partial)."""
    sources = _write_inputs(BATCH, tmp_path / "in")
    out = tmp_path / "out"
    code = main([*map(str, sources), "-o", str(out), *_set_flags(FACE_ONLY)])
    err = capsys.readouterr().err
    assert code == EXIT_PARTIAL, err
    outputs = _outputs(out)
    good = [c for c in BATCH if c.expect == "ok"]
    bad = [c for c in BATCH if c.expect == "error"]
    assert sorted(outputs) == sorted(c.name for c in good)
    for case in good:
        check_output(case, outputs[case.name].read_bytes())
    for case, source in zip(BATCH, sources, strict=True):
        if case.expect == "error":
            assert f"anonymize: {source}: " in err, case.name
    assert f"anonymized {len(good)} of {len(BATCH)} image(s)" in err and f"{len(bad)} failed" in err


def test_cli_batch_of_only_bad_inputs_fails(tmp_path: Path, capsys) -> None:
    bad = [c for c in BATCH if c.expect == "error"]
    sources = _write_inputs(bad, tmp_path / "in")
    out = tmp_path / "out"
    assert main([*map(str, sources), "-o", str(out), *_set_flags(FACE_ONLY)]) == EXIT_FAILED
    assert not out.exists() or not any(out.rglob("*"))
    assert f"anonymized 0 of {len(bad)} image(s)" in capsys.readouterr().err
