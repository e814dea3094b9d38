#!/usr/bin/env python3
"""Build the AnonymizerLayer (Lambda layer) without Docker, from manylinux wheels.

    python tools/build_layer.py                          # build both architectures into build/layer-<arch>/
    python tools/build_layer.py --arch arm64 --out DIR   # what `sam build` runs (layers/anonymizer/Makefile)
    python tools/build_layer.py --skip-build --report    # size table (layer + each function), zips the layers
    python tools/build_layer.py --skip-build --check     # import + pipeline check in a fresh interpreter

The layer is ``DIR/python/``: the pinned wheels of tools/layer-requirements.txt installed for the
Lambda runtime's Python version and architecture (pip ``--platform/--python-version
--only-binary=:all: --no-deps``), the ``anonymizer`` package copied from layers/anonymizer/ (with its
models), then slimmed by the rules in ``SLIM_RULES``. boto3/botocore are never shipped: the Lambda
Python runtime provides them.

Lambda allows 250 MB unzipped for a function's code plus all its layers; ``--report`` prints that
sum per function and architecture and fails when it is over.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE_SRC = REPO / "layers" / "anonymizer" / "anonymizer"
FUNCTIONS_DIR = REPO / "functions"
REQUIREMENTS = Path(__file__).resolve().parent / "layer-requirements.txt"
DEFAULT_BUILD_DIR = REPO / "build"
DEFAULT_CACHE_DIR = REPO / ".cache" / "pip"

ARCHS = ("x86_64", "arm64")
PIP_ARCH = {"x86_64": "x86_64", "arm64": "aarch64"}
ELF_MACHINE = {"x86_64": 62, "arm64": 183}  # e_machine: EM_X86_64, EM_AARCH64

DEFAULT_PYTHON_VERSION = "3.13"  # keep equal to template.yaml's Runtime default (a unit test checks)
# glibc of the Lambda runtime's OS: python3.11 runs on Amazon Linux 2 (glibc 2.26), python3.12 and
# python3.13 on Amazon Linux 2023 (glibc 2.34). A wheel tagged for a newer glibc would not load there.
RUNTIME_GLIBC = {"3.11": 26, "3.12": 34, "3.13": 34}

LIMIT_BYTES = 250 * 1024 * 1024  # Lambda: function + all layers, unzipped (262,144,000 bytes)
MIB = 1024 * 1024

# Files of the anonymizer package that go into the layer (mirrors [tool.setuptools.package-data]).
PACKAGE_DATA = ("models/*.onnx", "models/*.md", "models/*.json", "assets/*", "web/*.html")

# Laptop-only code lives in anonymizer_local (local/), never in the layer: these modules moved
# there, and no layer file may name that package or the emulator's moto (--check and the build
# refuse a layer that does).
LAPTOP_ONLY_MODULES = (
    "anonymizer/cli.py",
    "anonymizer/evaluation.py",
    "anonymizer/aws/local.py",
    "anonymizer/video/local_run.py",
)
LAPTOP_ONLY_IMPORTS = ("anonymizer_local", "moto")

# Must never be in the layer: the runtime provides them, and a second copy could shadow it.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "urllib3", "dateutil", "six.py")


@dataclass(frozen=True)
class SlimRule:
    pattern: str  # glob relative to python/ (fnmatch on posix paths; ** = any depth)
    reason: str


# Everything removed here was checked not to be imported at run time: --check imports every package
# from the slimmed layer in a fresh interpreter and runs an ONNX model and the pipeline.
SLIM_RULES: tuple[SlimRule, ...] = (
    SlimRule("**/__pycache__", "bytecode of the build host's Python; /opt is read-only anyway"),
    SlimRule("**/*.pyc", "bytecode"),
    SlimRule("**/*.pyi", "type stubs"),
    SlimRule("*-stubs", "type stub packages (wrapt-stubs)"),
    SlimRule("bin", "console scripts (f2py, numpy-config, ...)"),
    SlimRule("*.dist-info/RECORD", "install records (importlib.metadata needs only METADATA)"),
    SlimRule("*.dist-info/INSTALLER", "install records (importlib.metadata needs only METADATA)"),
    SlimRule("*.dist-info/REQUESTED", "install records (importlib.metadata needs only METADATA)"),
    SlimRule("*.dist-info/direct_url.json", "install records (importlib.metadata needs only METADATA)"),
    # numpy
    SlimRule("numpy/**/tests", "numpy test suites"),
    SlimRule("numpy/tests", "numpy test suites"),
    SlimRule("numpy/_core/include", "C headers"),
    SlimRule("numpy/_core/lib", "static npymath library and pkg-config files for C builds"),
    SlimRule("numpy/f2py", "Fortran wrapper generator (lazy-loaded only if numpy.f2py is used)"),
    SlimRule("numpy/_pyinstaller", "PyInstaller hooks"),
    # onnxruntime: only onnxruntime.capi (the pybind module) is used at run time
    SlimRule("onnxruntime/tools", "model conversion/optimisation tools (need onnx, sympy, ...)"),
    SlimRule("onnxruntime/transformers", "transformer graph optimiser tools"),
    SlimRule("onnxruntime/quantization", "quantisation tooling (models are quantised offline)"),
    SlimRule("onnxruntime/backend", "ONNX backend test API (needs the onnx package)"),
    SlimRule("onnxruntime/datasets", "sample models"),
    SlimRule(
        "onnxruntime/capi/libonnxruntime.so*",
        "the C API shared library for native programs; the Python binding "
        "(onnxruntime_pybind11_state) is self-contained and neither links nor dlopens it",
    ),
    # opencv
    SlimRule("cv2/data", "Haar cascade XML files (the anonymizer uses its own ONNX detectors)"),
    SlimRule("cv2/samples", "helper to locate OpenCV sample data"),
)


# ---------------------------------------------------------------------------------------------
# small helpers (pure; unit-tested on fake trees)


def tree_size(path: Path, *, exclude_pycache: bool = False) -> int:
    """Sum of the sizes of the regular files under path (what Lambda counts as unzipped size)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, dirs, files in os.walk(path):
        if exclude_pycache:
            dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if exclude_pycache and name.endswith(".pyc"):
                continue
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def _match(rel: str, pattern: str) -> bool:
    """fnmatch where a leading '**/' also matches at the top level."""
    if fnmatch.fnmatchcase(rel, pattern):
        return True
    return pattern.startswith("**/") and fnmatch.fnmatchcase(rel, pattern[3:])


def slim(site: Path, rules: tuple[SlimRule, ...] = SLIM_RULES) -> list[tuple[str, str, int]]:
    """Remove what matches the rules under site; returns (relative path, reason, bytes) per removal."""
    site = Path(site)
    removed: list[tuple[str, str, int]] = []
    # topdown walk so that a removed directory is not descended into
    for root, dirs, files in os.walk(site, topdown=True):
        rel_root = Path(root).relative_to(site).as_posix()
        rel_root = "" if rel_root == "." else rel_root + "/"
        for d in list(dirs):
            rel = rel_root + d
            rule = next((r for r in rules if _match(rel, r.pattern)), None)
            if rule:
                p = Path(root) / d
                size = tree_size(p)
                shutil.rmtree(p)
                dirs.remove(d)
                removed.append((rel, rule.reason, size))
        for f in files:
            rel = rel_root + f
            rule = next((r for r in rules if _match(rel, r.pattern)), None)
            if rule:
                p = Path(root) / f
                size = p.lstat().st_size
                p.unlink()
                removed.append((rel, rule.reason, size))
    return removed


def summarize_removals(removed: list[tuple[str, str, int]]) -> list[tuple[str, int, int]]:
    """(reason, count, bytes) per rule reason, largest first."""
    acc: dict[str, list[int]] = {}
    for _rel, reason, size in removed:
        c = acc.setdefault(reason, [0, 0])
        c[0] += 1
        c[1] += size
    return sorted(((r, c[0], c[1]) for r, c in acc.items()), key=lambda t: -t[2])


def platform_tags(arch: str, python_version: str) -> list[str]:
    """Every manylinux tag that the runtime's glibc accepts (pip does not expand manylinux_2_X tags).

    Oldest first: pip prefers the first tag given, and where a release has both a manylinux2014 and a
    manylinux_2_28 wheel the older one is smaller (opencv-python-headless 5.0.0.93: 7 MiB less on
    x86_64, 3 MiB less on arm64) and runs on the runtime just the same.
    """
    a = PIP_ARCH[arch]
    glibc = RUNTIME_GLIBC[python_version]
    return [f"manylinux2014_{a}"] + [f"manylinux_2_{m}_{a}" for m in range(17, glibc + 1)]


def copy_package(src: Path, dest: Path) -> None:
    """Copy the anonymizer package: its .py files and the package data that setuptools ships."""
    src, dest = Path(src), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if "__pycache__" in rel.parts or not path.is_file():
            continue
        posix = rel.as_posix()
        if path.suffix == ".py" or any(fnmatch.fnmatchcase(posix, pat) for pat in PACKAGE_DATA):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def laptop_code_present(site: Path) -> list[str]:
    """Layer files that are laptop-only code (the CLI, the emulator, the evaluation) or import it."""
    site = Path(site)
    found = [rel for rel in LAPTOP_ONLY_MODULES if (site / rel).exists()]
    found += [name for name in LAPTOP_ONLY_IMPORTS if (site / name).exists()]
    pattern = re.compile(rf"^\s*(?:from|import)\s+({'|'.join(LAPTOP_ONLY_IMPORTS)})\b", re.MULTILINE)
    for path in sorted((site / "anonymizer").rglob("*.py")) if (site / "anonymizer").is_dir() else []:
        match = pattern.search(path.read_text(encoding="utf-8", errors="replace"))
        if match:
            found.append(f"{path.relative_to(site).as_posix()} imports {match.group(1)}")
    return found


def elf_machine(path: Path) -> int | None:
    """e_machine of an ELF file, None when it is not ELF."""
    with open(path, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[18:20], order)


def foreign_binaries(site: Path, arch: str) -> list[str]:
    """Shared objects in the tree that are not built for arch (a wrong-platform wheel)."""
    bad = []
    for p in Path(site).rglob("*.so*"):
        if p.is_file() and not p.is_symlink():
            m = elf_machine(p)
            if m is not None and m != ELF_MACHINE[arch]:
                bad.append(p.relative_to(site).as_posix())
    return bad


def runtime_provided_present(site: Path) -> list[str]:
    return [n for n in RUNTIME_PROVIDED if (Path(site) / n).exists()]


def function_dirs() -> dict[str, Path]:
    """The functions deployed with this layer; a function built as a container image (it has a
    Dockerfile: the video function, whose codecs do not fit beside the layer) carries its own."""
    if not FUNCTIONS_DIR.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(FUNCTIONS_DIR.iterdir())
        if p.is_dir() and (p / "app.py").exists() and not (p / "Dockerfile").exists()
    }


def size_rows(layers: dict[str, Path], functions: dict[str, Path]) -> list[dict]:
    """One row per (arch, function): layer, function and total unzipped bytes and the headroom."""
    rows = []
    for arch, layer in layers.items():
        layer_bytes = tree_size(layer)
        for name, fdir in functions.items() or {"(no function yet)": None}.items():
            fbytes = tree_size(fdir, exclude_pycache=True) if fdir else 0
            total = layer_bytes + fbytes
            rows.append(
                {
                    "arch": arch,
                    "function": name,
                    "layer_bytes": layer_bytes,
                    "function_bytes": fbytes,
                    "total_bytes": total,
                    "headroom_bytes": LIMIT_BYTES - total,
                    "ok": total <= LIMIT_BYTES,
                }
            )
    return rows


def format_table(rows: list[dict], zips: dict[str, int] | None = None) -> str:
    zips = zips or {}
    head = (
        f"{'arch':<7} {'function':<16} {'layer MiB':>10} {'zip MiB':>8} {'func KiB':>9} "
        f"{'total MiB':>10} {'headroom':>9}  ok"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        z = zips.get(r["arch"])
        lines.append(
            f"{r['arch']:<7} {r['function']:<16} {r['layer_bytes'] / MIB:>10.1f} "
            f"{(z / MIB if z else float('nan')):>8.1f} {r['function_bytes'] / 1024:>9.1f} "
            f"{r['total_bytes'] / MIB:>10.1f} {r['headroom_bytes'] / MIB:>9.1f}  {'yes' if r['ok'] else 'NO'}"
        )
    lines.append(f"limit: 250 MiB = {LIMIT_BYTES:,} bytes unzipped, function code + all layers")
    return "\n".join(lines)


def zip_dir(src: Path, dest_zip: Path) -> int:
    """Zip src's content (python/...) deterministically; returns the zip's size."""
    dest_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest_zip.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(Path(src).rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(path.relative_to(src).as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(path, "rb") as fh:
                    zf.writestr(info, fh.read(), compresslevel=6)
    tmp.replace(dest_zip)
    return dest_zip.stat().st_size


# ---------------------------------------------------------------------------------------------
# build


def read_requirements(path: Path = REQUIREMENTS) -> list[str]:
    reqs = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            reqs.append(line)
    return reqs


def pip_install(site: Path, arch: str, python_version: str, cache_dir: Path) -> None:
    """Download the pinned wheels into cache_dir/wheels (kept between builds), install from there only.

    pip's own HTTP cache is not relied upon (the index here answers with no-store); with the wheels
    already in the cache an offline rebuild works too.
    """
    wheels = cache_dir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    select = ["--no-deps", "--only-binary=:all:", "--implementation", "cp", "--python-version", python_version]
    for tag in platform_tags(arch, python_version):
        select += ["--platform", tag]
    reqs = read_requirements()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    download = [*pip, "download", "--quiet", "--dest", str(wheels), "--cache-dir", str(cache_dir), *select, *reqs]
    print(
        f"+ pip download {len(reqs)} pinned wheels for cp{python_version.replace('.', '')}/{arch} -> {wheels}",
        flush=True,
    )
    if subprocess.run(download).returncode != 0:
        print("  pip download failed; installing from the wheel cache only", flush=True)
    install = [
        *pip,
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        str(wheels),
        "--target",
        str(site),
        "--no-compile",
        "--upgrade",
        *select,
        *reqs,
    ]
    subprocess.run(install, check=True)
    got = sorted(p.name for p in site.glob("*.dist-info"))
    print("  installed:", ", ".join(n[: -len(".dist-info")] for n in got), flush=True)


def strip_binaries(site: Path, arch: str) -> int:
    """strip --strip-unneeded the unstripped ELF objects, with a strip that knows the target; opt-in.

    Saves ~4 MiB on x86_64 (numpy's and opencv's bundled libraries). It is off by default because
    auditwheel/patchelf-edited objects are a known source of strip breakage, and the saving is small.
    """
    candidates = [f"{'x86_64' if arch == 'x86_64' else 'aarch64'}-linux-gnu-strip"]
    if platform.machine() in (PIP_ARCH[arch], arch):
        candidates.append("strip")
    tool = next((shutil.which(c) for c in candidates if shutil.which(c)), None)
    if not tool:
        print(f"  strip: no strip for {arch} found (tried {candidates}); skipped")
        return 0
    before = tree_size(site)
    for p in site.rglob("*.so*"):
        if p.is_file() and not p.is_symlink() and elf_machine(p) == ELF_MACHINE[arch]:
            subprocess.run([tool, "--strip-unneeded", str(p)], check=False, capture_output=True)
    saved = before - tree_size(site)
    print(f"  strip ({tool}): saved {saved / MIB:.1f} MiB")
    return saved


def build(arch: str, out: Path, python_version: str, cache_dir: Path, do_strip: bool = False) -> Path:
    out = Path(out).resolve()
    site = out / "python"
    print(f"== building layer {arch} (python{python_version}) into {site}", flush=True)
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    pip_install(site, arch, python_version, cache_dir)
    installed = tree_size(site)
    copy_package(PACKAGE_SRC, site / "anonymizer")
    removed = slim(site)
    for reason, count, size in summarize_removals(removed):
        print(f"  slim: -{size / MIB:6.1f} MiB  {count:4d} x {reason}")
    if do_strip:
        strip_binaries(site, arch)
    bad = foreign_binaries(site, arch)
    if bad:
        raise SystemExit(f"layer {arch}: binaries for another architecture: {bad[:5]}")
    leaked = runtime_provided_present(site)
    if leaked:
        raise SystemExit(f"layer {arch}: ships runtime-provided packages {leaked}")
    laptop = laptop_code_present(site)
    if laptop:
        raise SystemExit(f"layer {arch}: ships laptop-only code {laptop}")
    final = tree_size(site)
    print(f"  installed {installed / MIB:.1f} MiB -> layer {final / MIB:.1f} MiB (anonymizer package included)")
    return site


# ---------------------------------------------------------------------------------------------
# check: the built layer alone, in a fresh interpreter of the runtime's Python version

CHECK_SCRIPT = r"""
import importlib, importlib.util, json, os, sys, time

cfg = json.loads(os.environ["LAYER_CHECK"])
layer = cfg["layer"]
t0 = time.perf_counter()
failures = []


def ok(msg):
    print("  ok   " + msg, flush=True)


def fail(msg):
    failures.append(msg)
    print("  FAIL " + msg, flush=True)


def ms_since(t):
    return 1000 * (time.perf_counter() - t)


print("  python", sys.version.split()[0], sys.executable)
print("  sys.path", sys.path)
for name in ["numpy", "cv2", "onnxruntime", "aws_lambda_powertools", "aws_xray_sdk", "anonymizer"]:
    t = time.perf_counter()
    try:
        m = importlib.import_module(name)
    except Exception as e:
        fail(f"import {name}: {type(e).__name__}: {e}")
        continue
    where = os.path.realpath(m.__file__)
    if not where.startswith(os.path.realpath(layer)):
        fail(f"{name} imported from outside the layer: {where}")
    else:
        ok(f"import {name:<22} {getattr(m, '__version__', ''):<10} {ms_since(t):7.0f} ms")
if "boto3" in sys.modules or "botocore" in sys.modules:
    print("  note boto3/botocore were imported (from the simulated runtime, not the layer)")

try:
    from aws_lambda_powertools import Logger, Metrics, Tracer

    Logger(service="layer-check")
    Metrics(namespace="Anonymizer")
    Tracer(service="layer-check", disabled=True)
    ok("powertools Logger/Metrics/Tracer construct")
except Exception as e:
    fail(f"powertools: {type(e).__name__}: {e}")

import cv2
import numpy as np
import onnxruntime as ort

ok(f"onnxruntime providers {ort.get_available_providers()}")
DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}
for path in cfg["models"]:
    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feeds = {}
        for i in sess.get_inputs():
            # dynamic dimensions: batch 1, 3 channels, 64 pixels
            shape = [d if isinstance(d, int) and d > 0 else (1, 3)[k] if k < 2 else 64 for k, d in enumerate(i.shape)]
            dtype = DTYPES.get(i.type, np.float32)
            scale = 1 if dtype == np.float32 else 255
            feeds[i.name] = (np.random.default_rng(0).random(shape) * scale).astype(dtype)
        t = time.perf_counter()
        outs = sess.run(None, feeds)
        ok(f"onnx {os.path.basename(path)}: {[o.shape for o in outs]} in {ms_since(t):.0f} ms")
    except Exception as e:
        fail(f"onnx {path}: {type(e).__name__}: {e}")


def images():
    # the sample photos when ../shared/data is there, else a drawn face-like picture
    if cfg["images"]:
        return [(os.path.basename(p), open(p, "rb").read()) for p in cfg["images"]]
    img = np.full((480, 640, 3), 200, np.uint8)
    cv2.ellipse(img, (320, 240), (80, 105), 0, 0, 360, (140, 170, 220), -1)
    for x in (290, 350):
        cv2.circle(img, (x, 215), 10, (40, 40, 40), -1)
    cv2.ellipse(img, (320, 290), (30, 12), 0, 0, 180, (60, 60, 160), 3)
    return [("synthetic.jpg", cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())]


if importlib.util.find_spec("anonymizer.pipeline") is not None:
    try:
        from anonymizer.options import parse_options
        from anonymizer.pipeline import Anonymizer

        models_dir = os.path.join(layer, "anonymizer", "models")
        targets = [t for t in ("face", "plate") if os.path.exists(os.path.join(models_dir, t + ".json"))]
        values = {}
        if len(targets) < 2:
            print(f"  note only {targets or 'no'} model card(s) in the layer: pipeline run with targets={targets}")
            values = {"targets": ",".join(targets)}
        t = time.perf_counter()
        anonymizer = Anonymizer()
        init_ms = ms_since(t)
        for name, data in images() if targets else []:
            t = time.perf_counter()
            res = anonymizer.anonymize(data, parse_options(values))
            ms = ms_since(t)
            labels = {}
            for d in res.report.get("detections") or []:
                label = d.get("label", "?") if isinstance(d, dict) else getattr(d, "label", "?")
                labels[label] = labels.get(label, 0) + 1
            ok(
                f"pipeline {name}: {len(data)} B -> {len(res.data)} B {res.content_type}, "
                f"detections {labels}, {ms:.0f} ms (Anonymizer() {init_ms:.0f} ms)"
            )
    except Exception as e:
        import traceback

        traceback.print_exc()
        fail(f"pipeline: {type(e).__name__}: {e}")
else:
    print("  skip anonymizer.pipeline does not exist yet (checked imports and ONNX sessions only)")

# the functions, imported as Lambda would (/var/task first), with the runtime's boto3 after the layer
for fname, fdir in cfg["functions"].items():
    sys.path.insert(0, fdir)
    try:
        sys.modules.pop("app", None)
        t = time.perf_counter()
        app = importlib.import_module("app")
        assert callable(getattr(app, "lambda_handler", None)), "no lambda_handler"
        ok(f"function {fname}: import app + lambda_handler in {ms_since(t):.0f} ms")
    except Exception as e:
        fail(f"function {fname}: {type(e).__name__}: {e}")
    finally:
        sys.path.remove(fdir)
# what Lambda runs never reaches for the laptop-only package (CLI, emulator, evaluation) or moto
laptop = sorted(m for m in sys.modules if m.split(".")[0] in ("anonymizer_local", "moto"))
if laptop or importlib.util.find_spec("anonymizer_local") is not None:
    fail(f"laptop-only code reachable from the layer: {laptop or 'anonymizer_local importable'}")
else:
    ok("the functions and the library imported no laptop-only code (anonymizer_local, moto)")
verdict = f"FAILED: {len(failures)}" if failures else "all checks passed"
print(f"  total {time.perf_counter() - t0:.1f} s; {verdict}")
sys.exit(1 if failures else 0)
"""


def find_python(version: str, explicit: str | None = None) -> str:
    """An interpreter of exactly `version` (the Lambda runtime's): --python, PATH, pyenv, /usr/bin."""
    candidates = [explicit] if explicit else []
    candidates += [shutil.which(f"python{version}")]
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"), reverse=True)
    candidates += [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    for c in candidates:
        if not c or not os.path.exists(c):
            continue
        try:
            out = subprocess.run(
                [c, "-I", "-c", "import sys;print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return c
    raise SystemExit(f"no python{version} interpreter found; pass --python (the check must use the runtime's version)")


def runtime_sim(python_version: str, cache_dir: Path, build_dir: Path) -> Path:
    """boto3 as the Lambda runtime provides it (/var/runtime), for importing the functions."""
    target = build_dir / f"runtime-sim-py{python_version}"
    if not (target / "boto3").exists():
        print(f"  installing boto3 for python{python_version} into {target} (stands for the runtime's SDK)")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
                str(target),
                "--only-binary=:all:",
                "--no-compile",
                "--python-version",
                python_version,
                "--cache-dir",
                str(cache_dir),
                "boto3",
            ],
            check=True,
        )
    return target


def tiny_model(path: Path) -> Path | None:
    """A small Conv/Relu/Pool ONNX model, when the onnx package is available to this interpreter."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    import numpy as np

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["y"]),
        ],
        "layer_check",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def sample_images(limit: int = 2) -> list[str]:
    """A face and a plate photo from ../shared/data when it is there (never copied anywhere)."""
    base = REPO.parent / "shared" / "data"
    found = []
    for sub in ("faces/street-masks-dev/images", "plates/web-cars/images"):
        files = sorted(glob.glob(str(base / sub / "*.jpg")))
        if files:
            found.append(files[0])
    return found[:limit]


# Libraries a manylinux wheel may take from the system and that the Lambda runtime images have.
BASE_SYSTEM_LIBS = {
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libutil.so.1",
    "libresolv.so.2",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libz.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
}


def missing_libraries(site: Path) -> dict[str, list[str]] | None:
    """NEEDED entries of the layer's ELF objects found neither in the layer nor in BASE_SYSTEM_LIBS.

    Works for any architecture (readelf reads foreign ELF files); None when readelf is missing.
    """
    readelf = shutil.which("readelf")
    if not readelf:
        return None
    site = Path(site)
    present = {p.name for p in site.rglob("*.so*")}
    missing: dict[str, list[str]] = {}
    for p in sorted(site.rglob("*.so*")):
        if not p.is_file() or p.is_symlink() or elf_machine(p) is None:
            continue
        out = subprocess.run([readelf, "-d", str(p)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if "(NEEDED)" in line and "[" in line:
                lib = line.split("[", 1)[1].rstrip("]")
                if lib not in present and lib not in BASE_SYSTEM_LIBS:
                    missing.setdefault(lib, []).append(p.relative_to(site).as_posix())
    return missing


DEFAULT_ARM64_SYSROOT = REPO / ".cache" / "arm64-sysroot"
DEFAULT_QEMU = REPO / ".cache" / "qemu-aarch64"


def arm64_interpreter(python_version: str, sysroot: Path, qemu: str | None = None) -> list[str] | None:
    """[qemu-aarch64, -L, sysroot, python] when an arm64 python of that version is in sysroot.

    qemu 7.2 (Debian 12's qemu-user-static) crashes in onnxruntime's extension module, with or without
    slimming; qemu 10 (Debian 13's qemu-user, fetched by --make-arm64-sysroot) runs it.
    """
    candidates = [qemu, str(DEFAULT_QEMU), shutil.which("qemu-aarch64"), shutil.which("qemu-aarch64-static")]
    qemu = next((c for c in candidates if c and os.path.exists(c)), None)
    python = Path(sysroot) / "usr" / "bin" / f"python{python_version}"
    if not qemu or not python.exists():
        return None
    return [qemu, "-L", str(sysroot), str(python)]


def _private_apt(root: Path, arch: str, suite: str = "trixie") -> list[str]:
    """apt-get with its own state under root (the host's apt configuration stays untouched)."""
    for d in (
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").touch()
    (root / "etc/apt/sources.list").write_text(f"deb [arch={arch}] http://deb.debian.org/debian {suite} main\n")
    apt = ["apt-get", "-q", "-o", f"Dir={root}", "-o", f"Dir::State::status={root}/var/lib/dpkg/status"]
    apt += ["-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures::={arch}"]
    apt += ["-o", "Dir::Etc::trusted=/etc/apt/trusted.gpg", "-o", "Dir::Etc::TrustedParts=/etc/apt/trusted.gpg.d"]
    apt += ["-o", f"Dir::Cache::archives={root}/var/cache/apt/archives", "-o", "Debug::NoLocking=1"]
    subprocess.run([*apt, "update"], check=True)
    return apt


def make_arm64_sysroot(sysroot: Path, python_version: str) -> None:
    """An arm64 CPython from Debian packages unpacked into sysroot, and qemu-aarch64, for --check.

    Debian 13 (trixie) ships python3.13, and its qemu-user 10 (static binary) runs onnxruntime where
    Debian 12's qemu 7.2 crashes. Needs apt-get and dpkg-deb (Debian/Ubuntu host, x86_64). The
    sysroot's glibc (2.41) is newer than Lambda's (2.34): the emulated run checks the architecture
    and the slimming; the manylinux tags pip is given guarantee the glibc floor.
    """
    if python_version != "3.13":
        raise SystemExit("Debian trixie provides python3.13 only; use --python-version 3.13")
    apt_root = sysroot.parent / "arm64-apt"
    apt = _private_apt(apt_root, "arm64")
    packages = [f"python{python_version}-minimal", f"libpython{python_version}-stdlib", "libstdc++6", "zlib1g"]
    subprocess.run([*apt, "install", "-y", "--download-only", "--no-install-recommends", *packages], check=True)
    if sysroot.exists():
        shutil.rmtree(sysroot)
    sysroot.mkdir(parents=True)
    for deb in sorted((apt_root / "var/cache/apt/archives").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(sysroot)], check=True)
    for link in ("lib", "lib64"):  # merged /usr
        if (sysroot / "usr" / link).is_dir() and not (sysroot / link).exists():
            (sysroot / link).symlink_to(f"usr/{link}")
    print(f"arm64 python{python_version} unpacked into {sysroot}")
    if not DEFAULT_QEMU.exists():
        host_root = sysroot.parent / "amd64-apt"
        apt = _private_apt(host_root, "amd64")
        subprocess.run([*apt, "download", "qemu-user"], check=True, cwd=host_root)
        deb = max(host_root.glob("qemu-user_*.deb"))
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
            shutil.copy2(Path(tmp) / "usr" / "bin" / "qemu-aarch64", DEFAULT_QEMU)
        print(f"qemu-aarch64 ({deb.name}) at {DEFAULT_QEMU}")


def check(
    site: Path,
    interpreter: list[str],
    python_version: str,
    cache_dir: Path,
    build_dir: Path,
    with_functions: bool = True,
) -> bool:
    """Run CHECK_SCRIPT with `interpreter` (a python of the runtime's version, maybe behind qemu)."""
    print(
        f"== check {site}\n   with {' '.join(interpreter)}\n   fresh interpreter (-s -S): sys.path = layer "
        "[+ boto3 as the runtime provides it] + stdlib",
        flush=True,
    )
    laptop = laptop_code_present(site)
    if laptop:
        print(f"  FAIL laptop-only code in the layer (CLI, emulator, evaluation): {laptop}")
        return False
    print("  ok   no laptop-only code in the layer (anonymizer_local, CLI, emulator, evaluation, moto)")
    missing = missing_libraries(site)
    if missing is None:
        print("  skip shared-library check (readelf not found)")
    elif missing:
        for lib, users in missing.items():
            print(f"  FAIL {lib} is needed by {users[:3]} but is neither in the layer nor a base system library")
        return False
    else:
        print("  ok   every NEEDED shared library is in the layer or a base system library (glibc, libstdc++, libz)")
    with tempfile.TemporaryDirectory() as tmp:
        models = sorted(str(p) for p in (site / "anonymizer" / "models").glob("*.onnx"))
        extra = tiny_model(Path(tmp) / "tiny_conv.onnx")
        if extra:
            models.append(str(extra))
        functions = {k: str(v) for k, v in function_dirs().items()} if with_functions else {}
        path = [str(site)]
        if functions:
            path.append(str(runtime_sim(python_version, cache_dir, build_dir)))
        cfg = {"layer": str(site), "models": models, "images": sample_images(), "functions": functions}
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tmp,
            "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join(path),  # honoured because -E is not given; -s drops user site
            "PYTHONDONTWRITEBYTECODE": "1",
            "LAYER_CHECK": json.dumps(cfg),
            # what Lambda and the template set, so the functions import as they would there
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
            "AWS_LAMBDA_FUNCTION_NAME": "layer-check",
            "POWERTOOLS_SERVICE_NAME": "anonymizer",
            "POWERTOOLS_METRICS_NAMESPACE": "Anonymizer",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOGGER_LOG_EVENT": "false",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "OUTPUT_BUCKET": "check-output",
            "UPLOAD_BUCKET": "check-input",
            "UPLOAD_PREFIX": "uploads/",
            "IDEMPOTENCY_TABLE": "check-idempotency",
            "MAX_OBJECT_BYTES": "52428800",
            "ANONYMIZER_TARGETS": "face,plate",
            "ANONYMIZER_EFFECT": "blur",
        }
        # -S: no site-packages of that interpreter; -s: no user site; cwd is a temp dir (not the repo)
        rc = subprocess.run(
            [*interpreter, "-s", "-S", "-c", textwrap.dedent(CHECK_SCRIPT)], env=env, cwd=tmp
        ).returncode
    return rc == 0


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=(*ARCHS, "all"), default="all")
    ap.add_argument(
        "--out", type=Path, help="layer root (python/ goes inside); one --arch only. Default: build/layer-<arch>"
    )
    ap.add_argument(
        "--python-version",
        default=os.environ.get("LAYER_PYTHON_VERSION", DEFAULT_PYTHON_VERSION),
        choices=sorted(RUNTIME_GLIBC),
        help="the Lambda runtime's Python (default %(default)s)",
    )
    ap.add_argument("--python", help="interpreter of that version for --check (default: found on PATH/pyenv)")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    ap.add_argument("--skip-build", action="store_true", help="use the layers already built")
    ap.add_argument("--strip", action="store_true", help="strip --strip-unneeded the shared objects (opt-in)")
    ap.add_argument("--report", action="store_true", help="size table per arch and function; zips the layers")
    ap.add_argument(
        "--check",
        action="store_true",
        help="import + pipeline check in a fresh interpreter of the runtime's version: natively for "
        "the host's architecture, under qemu-user for arm64 when --arm64-sysroot has a python",
    )
    ap.add_argument(
        "--arm64-sysroot",
        type=Path,
        default=DEFAULT_ARM64_SYSROOT,
        help="arm64 root with usr/bin/pythonX.Y for the emulated check (default %(default)s)",
    )
    ap.add_argument("--qemu", help=f"qemu-aarch64 (user mode) for the arm64 check (default {DEFAULT_QEMU} or PATH)")
    ap.add_argument(
        "--make-arm64-sysroot",
        action="store_true",
        help="create --arm64-sysroot from Debian packages (python3.13 only), then continue",
    )
    args = ap.parse_args(argv)

    archs = list(ARCHS) if args.arch == "all" else [args.arch]
    if args.out and len(archs) != 1:
        ap.error("--out needs a single --arch")
    outs = {a: (args.out or DEFAULT_BUILD_DIR / f"layer-{a}").resolve() for a in archs}

    if not args.skip_build:
        for a in archs:
            build(a, outs[a], args.python_version, args.cache_dir.resolve(), do_strip=args.strip)

    sites = {a: outs[a] / "python" for a in archs}
    for site in sites.values():
        if not site.is_dir():
            raise SystemExit(f"no layer built at {site}; run without --skip-build first")

    status = 0
    if args.report:
        zips = {a: zip_dir(outs[a], outs[a].parent / f"{outs[a].name}.zip") for a in archs}
        rows = size_rows(sites, function_dirs())
        print(f"\n== sizes (python{args.python_version}; unzipped = sum of file sizes, as Lambda counts)")
        print(format_table(rows, zips))
        for a in archs:
            print(f"  {a}: zipped layer {outs[a].parent / (outs[a].name + '.zip')}")
        if not all(r["ok"] for r in rows):
            status = 1
    if args.check:
        host = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
        if args.make_arm64_sysroot and host != "arm64":
            make_arm64_sysroot(args.arm64_sysroot.resolve(), args.python_version)
        for a in archs:
            if a == host:
                interpreter = [find_python(args.python_version, args.python)]
            elif a == "arm64":
                interpreter = arm64_interpreter(args.python_version, args.arm64_sysroot.resolve(), args.qemu)
            else:
                interpreter = None
            if interpreter is None:
                print(
                    f"== check {a}: cannot run it on this {platform.machine()} host (for arm64: qemu-user-static "
                    f"and an arm64 python{args.python_version}, see --make-arm64-sysroot); skipped"
                )
                continue
            if not check(sites[a], interpreter, args.python_version, args.cache_dir.resolve(), DEFAULT_BUILD_DIR):
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
