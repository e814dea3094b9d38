"""The CLI's checks before any work (issue 15): one line and the documented exit code, never a
traceback, never a per-image failure for a usage problem. No model runs here."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from aws_fakes import make_jpeg

from anonymizer_local import cli
from anonymizer_local.cli import EXIT_USAGE, main
from anonymizer_local.files import OutputClaims, output_name, plan_inputs


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(make_jpeg())
    return path


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Every case here must be refused before the pipeline is even built."""
    import anonymizer.pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline was built: the problem was not caught before any work")

    monkeypatch.setattr(anonymizer.pipeline, "Anonymizer", refuse)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_output_that_is_a_file_is_a_usage_error(photo, tmp_path, capsys):
    existing = tmp_path / "existing_file.jpg"
    existing.write_bytes(b"keep me")
    assert main([str(photo), "-o", str(existing)]) == EXIT_USAGE
    assert "exists and is not a folder" in _one_line(capsys)
    assert existing.read_bytes() == b"keep me"


def test_output_that_cannot_be_created_is_a_usage_error(photo, capsys):
    assert main([str(photo), "-o", "/dev/null/x"]) == EXIT_USAGE
    assert "cannot create the folder" in _one_line(capsys)


def test_eval_on_a_folder_without_annotations(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == EXIT_USAGE
    assert "no annotations.json" in _one_line(capsys)


@pytest.mark.parametrize("bad", ["{", '{"images": 3}'])
def test_eval_on_broken_annotations(tmp_path, capsys, bad):
    (tmp_path / "annotations.json").write_text(bad)
    assert main(["eval", str(tmp_path)]) == EXIT_USAGE
    assert "not COCO json" in _one_line(capsys)


def test_eval_with_a_missing_split_file(tmp_path, capsys):
    (tmp_path / "annotations.json").write_text('{"images": [], "annotations": []}')
    assert main(["eval", str(tmp_path), "--ids", str(tmp_path / "none.json")]) == EXIT_USAGE
    assert "--ids" in _one_line(capsys)


@pytest.mark.parametrize(
    "argv",
    [
        ["x.jpg", "-o", "out", "--jobs", "0"],
        ["x.jpg", "-o", "out", "--jobs", "-1"],
        ["x.jpg", "-o", "out", "--jobs", "100"],
        ["detect", "x.jpg", "--min-score", "2"],
        ["detect", "x.jpg", "--min-score", "nan"],
        ["serve", "--port", "99999"],
        ["serve", "--port", "-5"],
    ],
)
def test_unchecked_numbers_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_USAGE
    assert "argument --" in _one_line(capsys)


def _png_logo(path: Path) -> Path:
    path.write_bytes(cv2.imencode(".png", np.zeros((8, 8, 4), np.uint8))[1].tobytes())
    return path


def test_a_logo_without_a_logo_effect_is_a_usage_error(photo, tmp_path, capsys):
    logo = _png_logo(tmp_path / "brand.png")
    assert main([str(photo), "-o", str(tmp_path / "out"), "--logo", str(logo)]) == EXIT_USAGE
    assert "--logo is only used with" in _one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_photo_as_logo_is_refused_once_not_per_image(photo, tmp_path, capsys):
    code = main([str(photo), str(photo), "-o", str(tmp_path / "out"), "--effect", "logo", "--logo", str(photo)])
    assert code == EXIT_USAGE
    line = _one_line(capsys)
    assert line.startswith(f"anonymize: --logo {photo}:") and "PNG" in line


def test_environment_defaults_apply_to_the_cli(photo, tmp_path, capsys, monkeypatch):
    """The README says ANONYMIZER_* defaults apply everywhere: a bad one is named, before any work."""
    monkeypatch.setenv("ANONYMIZER_FACE_EFFECT", "swirl")
    assert main([str(photo), "-o", str(tmp_path / "out")]) == EXIT_USAGE
    assert "ANONYMIZER_FACE_EFFECT must be one of" in _one_line(capsys)
    monkeypatch.setenv("ANONYMIZER_FACE_EFFECT", "pixelate")
    args = cli.build_parser("run").parse_args([str(photo), "-o", "out"])
    assert cli._options_from_args(args).face.effect == "pixelate"
    args = cli.build_parser("run").parse_args([str(photo), "-o", "out", "--face-effect", "fill"])
    assert cli._options_from_args(args).face.effect == "fill"  # a flag beats the environment


# --- the output plan -------------------------------------------------------------------------------


def test_two_folders_with_the_same_file_name_get_two_outputs(tmp_path):
    for folder in ("dA", "dB"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "p.jpg").write_bytes(b"x")
    (tmp_path / "dB" / "P.png").write_bytes(b"x")  # same name but for case and suffix
    plan = plan_inputs([str(tmp_path / "dA"), str(tmp_path / "dB")])
    assert [item.relative for item in plan] == ["p.jpg", "1/P.png", "2/p.jpg"]
    assert [item.path for item in plan] == [tmp_path / "dA/p.jpg", tmp_path / "dB/P.png", tmp_path / "dB/p.jpg"]


def test_output_names_keep_the_input_case_when_the_format_allows():
    assert output_name("IMG_0001.JPG", "jpeg") == "IMG_0001.JPG"
    assert output_name("a/Photo.JPEG", "jpeg") == "a/Photo.JPEG"
    assert output_name("Scan.TIF", "tiff") == "Scan.TIF"
    assert output_name("Shot.PNG", "jpeg") == "Shot.jpg"  # the format changed: its usual suffix
    assert output_name("phone.heic", "jpeg") == "phone.jpg"


def test_a_second_claim_on_one_output_is_refused(tmp_path):
    claims = OutputClaims()
    assert claims.claim(tmp_path / "p.jpg", "dA/p.jpg") is None
    assert claims.claim(tmp_path / "x" / ".." / "p.jpg", "dB/p.jpg") == "dA/p.jpg"
