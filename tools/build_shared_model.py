"""Join the face and plate detectors on their common trunk, quantize once, ship three models.

    python tools/build_shared_model.py [--plate-fp32 build/plates2/plate-fp32.onnx]
        -> models/face-plate-int8.onnx (+ face-plate.json), and face-int8.onnx / plate-int8.onnx
           re-derived from it (their cards' sha256 and version updated)

The plate model was fine-tuned from CenterFace with backbone ``features[0..3]`` frozen
(stride 2 and 4: about 60 % of a 1080p pass on two cores), so both fp32 models compute the
very same trunk. This tool checks that (trunk weights must be equal), joins the fp32 graphs
on the trunk output, and quantizes the joint graph once (static QDQ, per-channel weights),
calibrated on the face *and* the plate calibration images. (Also tried: each branch's ranges
over its own images only, the trunk's over both; it was no better on the threshold-choice
images: see the model cards.) The single-target models are then cut out of the joint int8
graph (each keeps only what its three heads need), so a face or a plate comes out bit for
bit the same whether one target or both were asked for.

The first convolution (3 input channels, full resolution) stays fp32: int8 kernels gain
nothing on 3 channels, and the input then needs no QuantizeLinear (joint pass at 1080p on
2 cores: 178-195 ms all int8, 170-174 ms with it fp32).

Inputs are the fp32 graphs the two build steps leave in ``build/``: ``tools/build_face_model.py``
(``build/face-model/face-fp32.onnx``) and ``python -m training.train_plates`` (``--work``/plate-fp32.onnx).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
MODELS = ROOT / "layers" / "anonymizer" / "anonymizer" / "models"
HEADS = ("heatmap", "scale", "offset")
LABELS = ("face", "plate")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: n for n in graph.node for out in n.output}


def trunk(graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], str]:
    """Convolutions up to the first residual Add (MobileNetV2 features[0..3]), in graph order, and its output."""
    add = next(n for n in graph.node if n.op_type == "Add")
    producers, inits = _producers(graph), {i.name for i in graph.initializer}
    seen, stack = set(), list(add.input)
    while stack:
        node = producers.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(i for i in node.input if i not in inits)
    return [n for n in graph.node if id(n) in seen and n.op_type == "Conv"], add.output[0]


def check_same_trunk(face: onnx.GraphProto, plate: onnx.GraphProto) -> int:
    """Trunk weights and biases must be equal: the plate model must have been trained with them frozen."""
    face_inits = {i.name: numpy_helper.to_array(i) for i in face.initializer}
    plate_inits = {i.name: numpy_helper.to_array(i) for i in plate.initializer}
    face_convs, plate_convs = trunk(face)[0], trunk(plate)[0]
    if len(face_convs) != len(plate_convs):
        raise SystemExit(f"trunks differ in depth: {len(face_convs)} vs {len(plate_convs)} convolutions")
    for f, p in zip(face_convs, plate_convs, strict=True):
        for fi, pi in zip(f.input[1:], p.input[1:], strict=True):
            a, b = face_inits[fi], plate_inits[pi]
            if a.shape != b.shape or not np.array_equal(a, b):
                raise SystemExit(f"trunk weights differ at {p.name}: was features[0..3] frozen in training?")
    return len(face_convs)


def _needed(graph: onnx.GraphProto, outputs: list[str], stop: str = "") -> list[onnx.NodeProto]:
    """Nodes that ``outputs`` depend on, not looking past tensor ``stop``."""
    producers, keep, stack = _producers(graph), set(), list(outputs)
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if name == stop or node is None or id(node) in keep:
            continue
        keep.add(id(node))
        stack.extend(node.input)
    return [n for n in graph.node if id(n) in keep]


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    return onnx.NodeProto.FromString(node.SerializeToString())


def join(face: onnx.ModelProto, plate: onnx.ModelProto) -> onnx.ModelProto:
    """One fp32 graph: the face graph, plus the plate layers after the trunk hung on the face trunk."""
    fg, pg = face.graph, plate.graph
    check_same_trunk(fg, pg)
    face_trunk_out, plate_trunk_out = trunk(fg)[1], trunk(pg)[1]
    rename = {plate_trunk_out: face_trunk_out}

    def plate_name(name: str) -> str:
        return rename.get(name, f"plate/{name}" if name else name)

    nodes = []
    for node in _needed(fg, list(HEADS)):
        node = _copy(node)
        node.output[:] = [f"face_{o}" if o in HEADS else o for o in node.output]
        nodes.append(node)
    for node in _needed(pg, list(HEADS), stop=plate_trunk_out):
        node = _copy(node)
        node.name = f"plate/{node.name}"
        node.input[:] = [plate_name(i) for i in node.input]
        node.output[:] = [f"plate_{o}" if o in HEADS else plate_name(o) for o in node.output]
        nodes.append(node)
    used = {i for n in nodes for i in n.input}
    inits = [i for i in fg.initializer if i.name in used]
    for init in pg.initializer:
        if plate_name(init.name) in used:
            init = onnx.TensorProto.FromString(init.SerializeToString())
            init.name = plate_name(init.name)
            inits.append(init)
    outputs = [f"{label}_{head}" for label in LABELS for head in HEADS]
    return _model(face, "face_plate_shared_trunk", nodes, inits, outputs)


def _model(like: onnx.ModelProto, name: str, nodes: list, inits: list, outputs: list[str]) -> onnx.ModelProto:
    """A checked model with ``like``'s input, opset and IR version, and float outputs ``outputs``."""
    values = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, None, None, None]) for o in outputs]
    graph = helper.make_graph(nodes, name, list(like.graph.input), values, inits)
    model = helper.make_model(graph, opset_imports=like.opset_import, producer_name="build_shared_model")
    model.ir_version = like.ir_version
    onnx.checker.check_model(model)
    return model


def cut(joint: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """The single-target model inside the joint one, outputs renamed to heatmap/scale/offset."""
    g = joint.graph
    prefix = f"{label}_"
    nodes = []
    for node in _needed(g, [prefix + h for h in HEADS]):
        node = _copy(node)
        node.output[:] = [o[len(prefix) :] if o in {prefix + h for h in HEADS} else o for o in node.output]
        nodes.append(node)
    used = {i for n in nodes for i in n.input}
    return _model(joint, f"{label}_detector", nodes, [i for i in g.initializer if i.name in used], list(HEADS))


def face_calibration():
    """The face build's calibration images, pre-processed as that build does."""
    from build_face_model import ImageReader, calibration_images

    faces = ImageReader(calibration_images(64), 640, 1280)
    while (item := faces.get_next()) is not None:
        yield item


def plate_calibration():
    """The 50 plate images recorded in ``training/calibration_plates.json``, at the plate working size.

    A fixed list, not "the training split": the split grew with new sources, and other images would
    move the shared trunk's int8 ranges and so change every face answer already measured."""
    import cv2

    from training import plates_data

    roots = {s.name: s.root for s in plates_data.SOURCES}
    listed = json.loads((ROOT / "training" / "calibration_plates.json").read_text())["images"]
    for item in listed:
        image = cv2.imread(str(Path(roots[item["source"]]) / item["file_name"]), cv2.IMREAD_COLOR)
        yield {"input": plates_data.working_image(image)[0]}


class Reader:
    """onnxruntime's CalibrationDataReader protocol over a generator."""

    def __init__(self, items):
        self.items = iter(items)

    def get_next(self):
        return next(self.items, None)


def quantize(fp32: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        raw, pre, int8 = (Path(tmp) / n for n in ("joint.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(fp32, raw)
        quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
        model = onnx.load(pre)
        for i, node in enumerate(model.graph.node):  # nodes_to_exclude needs names
            node.name = node.name or f"{node.op_type}_{i}"
        first_conv = next(n for n in model.graph.node if n.op_type == "Conv").name
        onnx.save(model, pre)
        quantize_static(
            str(pre),
            str(int8),
            Reader(itertools.chain(face_calibration(), plate_calibration())),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=[first_conv],  # 3 input channels: fp32 is faster there (see module docstring)
            extra_options={
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
            },
        )
        return onnx.load(int8)


def check_cut_models(models: Path) -> None:
    """The single models must reproduce the joint model's outputs exactly (real image, both policies)."""
    import cv2
    import onnxruntime as ort

    image = cv2.imread(str(next((ROOT.parent / "shared" / "data" / "plates" / "romania-dashcam").rglob("*.jpg"))))
    blob = np.zeros((1, 3, 736, 1280), np.float32)
    blob[0, :, :720] = image[:720, :1280, ::-1].transpose(2, 0, 1)
    joint = ort.InferenceSession(str(models / "face-plate-int8.onnx"), providers=["CPUExecutionProvider"])
    together = joint.run(None, {"input": blob})
    for k, label in enumerate(LABELS):
        single = ort.InferenceSession(str(models / f"{label}-int8.onnx"), providers=["CPUExecutionProvider"])
        alone = single.run(list(HEADS), {"input": blob})
        for a, b, head in zip(together[3 * k : 3 * k + 3], alone, HEADS, strict=True):
            if not np.array_equal(a, b):
                raise SystemExit(f"{label} {head}: joint and single model disagree (max {np.abs(a - b).max()})")
    print("single models reproduce the joint model exactly")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--face-fp32", type=Path, default=ROOT / "build" / "face-model" / "face-fp32.onnx")
    ap.add_argument("--plate-fp32", type=Path, default=ROOT / "build" / "plates5" / "plate-fp32.onnx")
    ap.add_argument("--models", type=Path, default=MODELS)
    args = ap.parse_args()

    joint = quantize(join(onnx.load(args.face_fp32), onnx.load(args.plate_fp32)))
    joint.doc_string = "face + licence-plate detectors (CenterFace architecture, MIT) on one shared trunk"
    target = args.models / "face-plate-int8.onnx"
    onnx.save(joint, target)
    members = {}
    for label in LABELS:
        path = args.models / f"{label}-int8.onnx"
        onnx.save(cut(joint, label), path)
        card_path = args.models / f"{label}.json"
        card = json.loads(card_path.read_text())
        card["sha256"] = sha256(path)
        card["version"] = f"{card['version'].split('@')[0]}@shared-{card['sha256'][:8]}"
        card["quantized_by"] = "python tools/build_shared_model.py (joint calibration, cut from face-plate-int8.onnx)"
        card_path.write_text(json.dumps(card, indent=1) + "\n")
        members[label] = {"version": card["version"], "sha256": card["sha256"]}
        print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB, sha256 {card['sha256'][:12]}")
    card = {
        "file": target.name,
        "sha256": sha256(target),
        "members": members,
        "sources": {"face": sha256(args.face_fp32), "plate": sha256(args.plate_fp32)},
        "outputs": {label: [f"{label}_{h}" for h in HEADS] for label in LABELS},
        "built_by": "python tools/build_shared_model.py",
    }
    (args.models / "face-plate.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"{target.name}: {target.stat().st_size / 1e6:.2f} MB, sha256 {card['sha256'][:12]}")
    check_cut_models(args.models)


if __name__ == "__main__":
    main()
