"""tools/build_layer.py without the network: slimming, sizes, tags and packaging on fake trees.

The real build downloads wheels from PyPI; `python tools/build_layer.py --report --check` is the
end-to-end check (see the README's Deploy section).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("build_layer", ROOT / "tools" / "build_layer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_layer", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return sys.modules["build_layer"]


bl = _load()


def write(path: Path, size: int = 10, data: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if data is not None else b"x" * size)
    return path


# Paths that the layer needs at run time: no slimming rule may touch them.
MUST_KEEP = [
    "cv2/__init__.py",
    "cv2/config.py",  # read by cv2's loader
    "cv2/config-3.py",
    "cv2/load_config_py3.py",
    "cv2/cv2.abi3.so",
    "cv2/typing/__init__.py",
    "opencv_python_headless.libs/libopenblasp-r0-59ffcd50.3.15.so",
    "opencv_python_headless.libs/libavcodec-c4204469.so.62.28.101",
    "numpy/__init__.py",
    "numpy/_core/_multiarray_umath.cpython-313-x86_64-linux-gnu.so",
    "numpy/testing/__init__.py",
    "numpy/linalg/_umath_linalg.cpython-313-x86_64-linux-gnu.so",
    "numpy.libs/libscipy_openblas64_-32a4b2a6.so",
    "onnxruntime/__init__.py",
    "onnxruntime/capi/_pybind_state.py",
    "onnxruntime/capi/onnxruntime_pybind11_state.cpython-313-x86_64-linux-gnu.so",
    "onnxruntime/capi/libonnxruntime_providers_shared.so",
    "onnxruntime/capi/onnxruntime_validation.py",
    "onnxruntime-1.32.0.dist-info/METADATA",  # importlib.metadata.version("onnxruntime")
    "onnxruntime-1.32.0.dist-info/licenses/LICENSE",
    "aws_lambda_powertools/__init__.py",
    "aws_lambda_powertools/py.typed",
    "aws_xray_sdk/core/__init__.py",
    "wrapt/__init__.py",
    "typing_extensions.py",
    "anonymizer/__init__.py",
    "anonymizer/pipeline.py",
    "anonymizer/models/face-int8.onnx",
    "anonymizer/models/face.json",
]

MUST_GO = [
    "numpy/_core/tests/test_multiarray.py",
    "numpy/tests/test_public_api.py",
    "numpy/linalg/tests/test_linalg.py",
    "numpy/_core/include/numpy/ndarrayobject.h",
    "numpy/_core/lib/libnpymath.a",
    "numpy/f2py/__init__.py",
    "numpy/__init__.pyi",
    "onnxruntime/tools/symbolic_shape_infer.py",
    "onnxruntime/transformers/optimizer.py",
    "onnxruntime/quantization/quantize.py",
    "onnxruntime/backend/backend.py",
    "onnxruntime/datasets/mul_1.onnx",
    "onnxruntime/capi/libonnxruntime.so.1.32.0",
    "cv2/data/haarcascade_frontalface_default.xml",
    "cv2/__init__.pyi",
    "wrapt-stubs/__init__.pyi",
    "bin/f2py",
    "numpy-2.4.6.dist-info/RECORD",
    "numpy-2.4.6.dist-info/INSTALLER",
    "anonymizer/__pycache__/pipeline.cpython-313.pyc",
    "aws_lambda_powertools/__pycache__/__init__.cpython-313.pyc",
]


@pytest.fixture
def fake_site(tmp_path: Path) -> Path:
    site = tmp_path / "python"
    for rel in MUST_KEEP + MUST_GO:
        write(site / rel, size=100)
    write(site / "onnxruntime/capi/libonnxruntime.so.1.32.0", size=5000)  # the big one
    return site


def test_slim_removes_what_is_unused_and_keeps_what_runs(fake_site: Path):
    before = bl.tree_size(fake_site)
    removed = bl.slim(fake_site)
    after = bl.tree_size(fake_site)
    for rel in MUST_KEEP:
        assert (fake_site / rel).exists(), f"slimming removed {rel}"
    for rel in MUST_GO:
        assert not (fake_site / rel).exists(), f"slimming kept {rel}"
    assert before - after == sum(size for _rel, _reason, size in removed)
    summary = bl.summarize_removals(removed)
    assert summary[0][2] >= 5000  # largest first: the onnxruntime C API library
    assert "C API" in summary[0][0]
    assert sum(s for _r, _c, s in summary) == before - after


def test_no_rule_matches_a_runtime_file():
    for rel in MUST_KEEP:
        for part in range(1, rel.count("/") + 2):  # the file and each parent folder
            sub = "/".join(rel.split("/")[:part])
            hits = [r.pattern for r in bl.SLIM_RULES if bl._match(sub, r.pattern)]
            assert not hits, f"{sub} matched {hits}"


def test_slim_is_idempotent(fake_site: Path):
    bl.slim(fake_site)
    assert bl.slim(fake_site) == []


def test_tree_size_counts_file_bytes_not_links(tmp_path: Path):
    write(tmp_path / "a", 1000)
    write(tmp_path / "d/b", 24)
    write(tmp_path / "d/__pycache__/b.cpython-313.pyc", 500)
    os.symlink(tmp_path / "a", tmp_path / "link")
    assert bl.tree_size(tmp_path) == 1524
    assert bl.tree_size(tmp_path, exclude_pycache=True) == 1024
    assert bl.tree_size(tmp_path / "a") == 1000


def test_platform_tags_follow_the_runtime_glibc():
    tags = bl.platform_tags("arm64", "3.13")
    assert tags[0] == "manylinux2014_aarch64"  # oldest first: pip prefers earlier tags (smaller wheels)
    assert "manylinux_2_28_aarch64" in tags and "manylinux_2_34_aarch64" in tags
    assert "manylinux_2_35_aarch64" not in tags  # Amazon Linux 2023: glibc 2.34
    assert all("aarch64" in t for t in tags)
    x86 = bl.platform_tags("x86_64", "3.11")  # Amazon Linux 2: glibc 2.26
    assert "manylinux_2_26_x86_64" in x86 and "manylinux_2_28_x86_64" not in x86
    assert set(bl.RUNTIME_GLIBC) >= {"3.12", "3.13"}


def test_requirements_are_pinned_and_leave_the_sdk_to_the_runtime():
    reqs = bl.read_requirements()
    names = {r.split("==")[0].lower().replace("_", "-") for r in reqs}
    assert all("==" in r for r in reqs), reqs
    assert {"numpy", "opencv-python-headless", "onnxruntime", "aws-lambda-powertools", "aws-xray-sdk"} <= names
    assert {"wrapt", "jmespath", "typing-extensions"} <= names  # --no-deps: listed explicitly
    assert not names & {"boto3", "botocore", "s3transfer", "urllib3", "opencv-python", "onnxruntime-gpu"}


def test_package_data_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["anonymizer"]
    assert set(bl.PACKAGE_DATA) == set(patterns)


def test_copy_package_takes_code_and_package_data_only(tmp_path: Path):
    src = tmp_path / "src" / "anonymizer"
    kept = [
        "__init__.py",
        "aws/__init__.py",
        "models/face-int8.onnx",
        "models/face.json",
        "models/face.md",
        "assets/logo.png",
    ]
    for rel in kept:
        write(src / rel)
    for rel in ["__pycache__/x.cpython-311.pyc", "models/notes.txt", "models/face-fp32.pt", "scratch.ipynb"]:
        write(src / rel)
    dest = tmp_path / "python" / "anonymizer"
    write(dest / "stale.py")  # a previous build's leftover goes away
    bl.copy_package(src, dest)
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert got == sorted(kept)


ELF_HEADER = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x03\x00"  # 64-bit, little endian, ET_DYN


def test_elf_machine_and_foreign_binaries(tmp_path: Path):
    write(tmp_path / "a.so", data=ELF_HEADER + (183).to_bytes(2, "little") + b"\x00" * 40)  # aarch64
    write(tmp_path / "b.so.1", data=ELF_HEADER + (62).to_bytes(2, "little") + b"\x00" * 40)  # x86_64
    write(tmp_path / "c.so", data=b"not an elf file at all")
    assert bl.elf_machine(tmp_path / "a.so") == 183
    assert bl.elf_machine(tmp_path / "c.so") is None
    assert bl.foreign_binaries(tmp_path, "arm64") == ["b.so.1"]
    assert bl.foreign_binaries(tmp_path, "x86_64") == ["a.so"]


def test_runtime_provided_packages_are_detected(tmp_path: Path):
    write(tmp_path / "numpy/__init__.py")
    assert bl.runtime_provided_present(tmp_path) == []
    write(tmp_path / "botocore/__init__.py")
    assert bl.runtime_provided_present(tmp_path) == ["botocore"]


def test_size_rows_flag_a_layer_over_the_limit(tmp_path: Path):
    small = tmp_path / "small" / "python"
    write(small / "x.bin", 10 * bl.MIB)
    big = tmp_path / "big" / "python"
    big.mkdir(parents=True)
    with open(big / "x.bin", "wb") as fh:  # sparse: no disk used
        fh.truncate(bl.LIMIT_BYTES - 1000)
    fn = tmp_path / "fn"
    write(fn / "app.py", 2000)
    write(fn / "__pycache__/app.cpython-313.pyc", 10_000)  # not deployed
    rows = bl.size_rows({"arm64": small, "x86_64": big}, {"s3_anonymize": fn})
    by_arch = {r["arch"]: r for r in rows}
    assert by_arch["arm64"]["ok"] and by_arch["arm64"]["function_bytes"] == 2000
    assert by_arch["x86_64"]["total_bytes"] == bl.LIMIT_BYTES + 1000
    assert not by_arch["x86_64"]["ok"] and by_arch["x86_64"]["headroom_bytes"] == -1000
    table = bl.format_table(rows, {"arm64": 5 * bl.MIB})
    assert "NO" in table and "yes" in table and "262,144,000" in table
    assert bl.LIMIT_BYTES == 262_144_000  # Lambda: "Unzipped size must be smaller than 262144000 bytes"


def test_zip_is_deterministic_and_rooted_at_python(tmp_path: Path):
    layer = tmp_path / "layer"
    write(layer / "python/anonymizer/__init__.py", data=b"x = 1\n")
    write(layer / "python/numpy/core.so", 3000)
    a = bl.zip_dir(layer, tmp_path / "a.zip")
    os.utime(layer / "python/numpy/core.so", (0, 12345678))
    b = bl.zip_dir(layer, tmp_path / "b.zip")
    assert a == b and (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    names = zipfile.ZipFile(tmp_path / "a.zip").namelist()
    assert names == ["python/anonymizer/__init__.py", "python/numpy/core.so"]


@pytest.mark.skipif(not shutil.which("readelf"), reason="readelf (binutils) is not installed")
def test_missing_libraries_finds_an_unbundled_dependency(tmp_path: Path):
    try:
        import _ctypes
    except ImportError:
        pytest.skip("no _ctypes extension module to test with")
    candidates = [Path(getattr(_ctypes, "__file__", ""))]  # needs libffi, not a base system library
    if not candidates[0].is_file():
        pytest.skip("_ctypes is built into this interpreter")
    site = tmp_path / "python"
    site.mkdir()
    shutil.copy(candidates[0], site / candidates[0].name)
    out = subprocess.run(["readelf", "-d", str(candidates[0])], capture_output=True, text=True).stdout
    if "libffi" not in out:
        pytest.skip("_ctypes is linked statically with libffi here")
    missing = bl.missing_libraries(site)
    assert any(lib.startswith("libffi") for lib in missing), missing
    libffi = next(lib for lib in missing if lib.startswith("libffi"))
    write(site / "ffi.libs" / libffi)  # bundled in the layer: fine
    assert libffi not in bl.missing_libraries(site)


def test_check_script_compiles():
    compile(textwrap.dedent(bl.CHECK_SCRIPT), "<check>", "exec")


def test_skip_build_without_a_layer_fails_clearly(tmp_path: Path):
    with pytest.raises(SystemExit, match="no layer built"):
        bl.main(["--arch", "arm64", "--out", str(tmp_path / "nothing"), "--skip-build", "--report"])


@pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")
@pytest.mark.parametrize("arch", [None, "x86_64"])
def test_makefile_calls_the_tool_from_any_directory(tmp_path: Path, arch: str | None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYER_")}
    if arch:
        env["LAYER_ARCH"] = arch
    env["ARTIFACTS_DIR"] = str(tmp_path / "artifacts")
    out = subprocess.run(
        ["make", "-n", "--makefile", str(ROOT / "layers/anonymizer/Makefile"), "build-AnonymizerLayer"],
        cwd=tmp_path,  # sam build runs make in a scratch copy, not in the repository
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(ROOT / "tools" / "build_layer.py") in out
    assert f"--arch {arch or 'arm64'}" in out
    assert f"--python-version {bl.DEFAULT_PYTHON_VERSION}" in out
    assert f'--out "{tmp_path / "artifacts"}"' in out


def test_laptop_only_code_is_detected(tmp_path: Path):
    """The layer carries only what Lambda runs: the CLI, the emulator and the evaluation stay out."""
    write(tmp_path / "anonymizer/__init__.py")
    write(tmp_path / "anonymizer/aws/api_flow.py", data=b"from ..options import parse_options\n")
    write(tmp_path / "anonymizer/video/evaluation.py", data=b'"""per-frame figures"""\n')  # a library module
    assert bl.laptop_code_present(tmp_path) == []
    write(tmp_path / "anonymizer/cli.py")
    write(tmp_path / "anonymizer/aws/local.py")
    write(tmp_path / "anonymizer_local/__init__.py")
    write(tmp_path / "anonymizer/pipeline.py", data=b"import os\n    from anonymizer_local.files import plan_inputs\n")
    assert bl.laptop_code_present(tmp_path) == [
        "anonymizer/cli.py",
        "anonymizer/aws/local.py",
        "anonymizer_local",
        "anonymizer/pipeline.py imports anonymizer_local",
    ]


def test_the_source_package_has_no_laptop_only_code(tmp_path: Path):
    """What copy_package puts in the layer today passes the check (the move to anonymizer_local held)."""
    dest = tmp_path / "python" / "anonymizer"
    bl.copy_package(bl.PACKAGE_SRC, dest)
    assert bl.laptop_code_present(tmp_path / "python") == []
