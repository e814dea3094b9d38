"""The CLI end to end on real images from ../shared/data (skipped where that folder is absent)."""

import json
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from anonymizer import imageio
from anonymizer.detection import get_detector
from anonymizer_local.cli import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, main

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def street_images(shared_data):
    folder = shared_data / "faces" / "street-masks-dev" / "images"
    return sorted(folder.glob("*.jpg"))[:3]


def test_anonymize_files_into_a_folder(street_images, tmp_path, capsys):
    code = main([*map(str, street_images), "-o", str(tmp_path), "--targets", "face", "--report"])
    assert code == EXIT_OK
    for source in street_images:
        out = tmp_path / source.name
        assert out.is_file() and imageio.metadata_markers(out.read_bytes()) == []
        report = json.loads((tmp_path / (source.name + ".report.json")).read_text())
        assert report["source"] == source.name  # relative: no folder outside the inputs leaks
        assert report["counts"]["face"] >= 1  # every one of these street photos shows faces
        assert imageio.decode(out.read_bytes()).pixels.shape == imageio.decode(source.read_bytes()).pixels.shape


def test_folder_and_glob_inputs_keep_structure(street_images, tmp_path):
    src = tmp_path / "in" / "sub"
    src.mkdir(parents=True)
    shutil.copy(street_images[0], src / "a.jpg")
    assert main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--targets", "face"]) == EXIT_OK
    assert (tmp_path / "out" / "sub" / "a.jpg").is_file()
    assert main([str(tmp_path / "in" / "*" / "*.jpg"), "-o", str(tmp_path / "g"), "--targets", "face"]) == EXIT_OK
    assert (tmp_path / "g" / "a.jpg").is_file()


def test_partial_failure_has_its_own_exit_code_and_publishes_nothing_for_the_bad_file(street_images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(street_images[0].read_bytes()[:2000])  # truncated JPEG
    code = main([str(street_images[0]), str(bad), "-o", str(tmp_path / "out"), "--targets", "face"])
    assert code == EXIT_PARTIAL
    assert not (tmp_path / "out" / "broken.jpg").exists()
    assert main([str(bad), "-o", str(tmp_path / "out2")]) == EXIT_FAILED


def test_an_original_is_never_overwritten(street_images, tmp_path):
    original = tmp_path / "photo.jpg"
    shutil.copy(street_images[0], original)
    before = original.read_bytes()
    assert main([str(original), "-o", str(tmp_path), "--targets", "face"]) == EXIT_FAILED
    assert original.read_bytes() == before


def test_bad_options_are_usage_errors(street_images, tmp_path, capsys):
    assert main([str(street_images[0]), "-o", str(tmp_path), "--effect", "swirl"]) == EXIT_USAGE
    assert "effect must be one of" in capsys.readouterr().err


def test_detect_jsonl_is_the_stable_evaluation_interface(street_images, capsys):
    assert main(["detect", *map(str, street_images), "--jsonl", "--targets", "face"]) == EXIT_OK
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in street_images]
    for line in lines:
        assert set(line) == {"image", "width", "height", "detections"}
        for det in line["detections"]:
            assert set(det) == {"label", "score", "box"} and det["label"] == "face"
            assert det["score"] >= get_detector("face").card.threshold  # the operating threshold
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 < x2 <= line["width"] and 0 <= y1 < y2 <= line["height"]


def test_detect_min_score_reports_more(street_images, capsys):
    main(["detect", str(street_images[0]), "--targets", "face"])
    default = json.loads(capsys.readouterr().out)
    main(["detect", str(street_images[0]), "--targets", "face", "--min-score", "0.05"])
    low = json.loads(capsys.readouterr().out)
    assert len(low["detections"]) >= len(default["detections"])
    assert min(d["score"] for d in low["detections"]) >= 0.05


def test_eval_prints_the_figures_on_a_split(shared_data, tmp_path, capsys):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(list(range(1, 21))))
    folder = shared_data / "faces" / "street-masks-dev"
    assert main(["eval", str(folder), "--ids", str(ids), "--targets", "face", "--json"]) == EXIT_OK
    result = json.loads(capsys.readouterr().out)["results"]["face"]
    assert result["images"] == 20 and result["objects"] > 20
    assert 0.5 < result["recall@0.5"] <= 1 and 0.5 < result["AP50"] <= 1


def test_the_installed_command_runs(street_images, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "anonymizer_local.cli", str(street_images[0]), "-o", str(tmp_path),
         "--targets", "face", "--effect", "pixelate"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == EXIT_OK, run.stderr
    assert (tmp_path / street_images[0].name).is_file()


def test_eval_writes_crops_of_what_it_could_not_match(shared_data, tmp_path, capsys):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(list(range(1, 11))))
    folder = shared_data / "faces" / "street-masks-dev"
    crops = tmp_path / "unmatched"
    assert main(["eval", str(folder), "--ids", str(ids), "--targets", "face", "--json", "--unmatched", str(crops)]) == 0
    result = json.loads(capsys.readouterr().out)["results"]["face"]
    tp = round(result["recall@0.5"] * result["objects"])
    files = sorted(p.name for p in crops.iterdir())
    assert sum("-missed" in f for f in files) == result["objects"] - tp
    assert sum("-fp-" in f for f in files) == result["detections"] - tp
    assert all(cv2.imread(str(crops / f)) is not None for f in files)


def test_images_in_flight_do_not_change_the_outputs(shared_data, tmp_path):
    """--jobs only overlaps work: the bytes written are the same as one image at a time."""
    cars = sorted((shared_data / "plates" / "web-cars" / "images").glob("*.jpg"))[:2]
    frames = sorted((shared_data / "plates" / "romania-dashcam").rglob("*.jpg"))[:2]
    big = tmp_path / "frame-1080p.jpg"  # screened: its spots run side by side
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(frames[0])), (1920, 1080)), [cv2.IMWRITE_JPEG_QUALITY, 90])
    inputs = [*map(str, cars + frames), str(big)]
    for jobs in (1, 3):
        assert main([*inputs, "-o", str(tmp_path / f"jobs{jobs}"), "--jobs", str(jobs)]) == EXIT_OK
    for path in (tmp_path / "jobs1").iterdir():
        assert path.read_bytes() == (tmp_path / "jobs3" / path.name).read_bytes(), path.name


def test_eval_can_look_at_the_set_as_a_camera_of_another_resolution(shared_data, tmp_path, capsys):
    """--resize: images and labels scaled alike (1280x720 dashcam frames as 1080p frames)."""
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(list(range(1, 9))))
    folder = shared_data / "plates" / "romania-dashcam"
    runs = {}
    for size in (None, "1920x1080"):
        extra = ["--resize", size] if size else []
        assert main(["eval", str(folder), "--ids", str(ids), "--targets", "plate", "--json", *extra]) == EXIT_OK
        runs[size] = json.loads(capsys.readouterr().out)["results"]["plate"]
    assert runs[None]["objects"] == runs["1920x1080"]["objects"] > 0
    assert runs["1920x1080"]["recall@0.5"] >= 0.5  # the labels moved with the pixels
    assert main(["eval", str(folder), "--ids", str(ids), "--resize", "wide"]) == EXIT_USAGE


def test_two_folders_holding_the_same_name_give_two_outputs(street_images, tmp_path, capsys):
    """`anonymize dA dB -o out` with p.jpg in both: two outputs, two successes, none overwritten."""
    for folder, source in (("dA", street_images[0]), ("dB", street_images[1])):
        (tmp_path / folder).mkdir()
        shutil.copy(source, tmp_path / folder / "p.jpg")
    out = tmp_path / "out"
    for jobs in ("1", "3"):  # images in flight must not race for one name either
        shutil.rmtree(out, ignore_errors=True)
        code = main([str(tmp_path / "dA"), str(tmp_path / "dB"), "-o", str(out), "--targets", "face", "--jobs", jobs])
        assert code == EXIT_OK
        outputs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        assert outputs == ["1/p.jpg", "p.jpg"]
        assert (out / "p.jpg").read_bytes() != (out / "1" / "p.jpg").read_bytes()
        assert "anonymized 2 of 2 image(s)" in capsys.readouterr().err


def test_the_closing_summary_counts_per_class_and_names_empty_images(street_images, tmp_path, capsys):
    blank = tmp_path / "Empty-Wall.JPG"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 190, np.uint8))
    code = main([str(street_images[0]), str(blank), "-o", str(tmp_path / "out"), "--targets", "face", "--report"])
    assert code == EXIT_OK
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "out" / (street_images[0].name + ".report.json")).read_text())
    faces = report["counts"]["face"]
    assert faces >= 1
    assert re.search(rf"anonymized 2 of 2 image\(s\) into \S+ in [0-9.]+ s; found {faces} face\(s\)", err), err
    assert f"nothing found in 1 image(s): {blank}" in err
    assert (tmp_path / "out" / "Empty-Wall.JPG").is_file()  # the file name's case is kept
