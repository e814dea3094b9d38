"""Start training from a shipped int8 QDQ model when its fp32 checkpoint is gone.

The quantized graph keeps every weight as int8 + per-channel scale (DequantizeLinear), has its
BatchNorms folded into the transposed convolutions (which then carry a bias) and its ReLUs fused
away. Dequantizing the weights gives the network back to within int8 rounding, which is a far
better start for fine-tuning than CenterFace's face weights.
"""

from __future__ import annotations

import numpy as np


def dequantized_initializers(onnx_path: str) -> tuple[list, dict[str, np.ndarray]]:
    """(conv nodes in graph order, {tensor name: fp32 array}) with DequantizeLinear outputs resolved."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(onnx_path)
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in init:
            continue
        x = init[node.input[0]].astype(np.float32)
        scale = init[node.input[1]].astype(np.float32)
        zero = init[node.input[2]].astype(np.float32) if len(node.input) > 2 else np.zeros_like(scale)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        init[node.output[0]] = (x - zero) * scale
    convs = [n for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    return convs, init


def _modules_for(model, convs: list) -> list:
    """The torch module of each graph conv: named ones (``plate//features.4/conv/conv.0/Conv``) by
    their path, the anonymous shared-trunk ones (``Conv_0`` …) in order over features[0..3]."""
    named = dict(model.named_modules())
    trunk = iter([m for f in model.features[:4] for m in f.modules() if isinstance(m, torch_conv())])
    mods = []
    for node in convs:
        if "//" in node.name:
            mods.append(named[_module_path(node.name.split("//", 1)[1].split("/")[:-1])])
        else:
            mods.append(next(trunk))
    if len(set(map(id, mods))) != len(model.ordered_convs()):
        raise ValueError(
            f"graph convs map to {len(set(map(id, mods)))} modules, model has {len(model.ordered_convs())}"
        )
    return mods


def _module_path(scopes: list[str]) -> str:
    """ONNX export scopes -> module path: ``features.4/conv/conv.0`` is ``features.4.conv.0``."""
    path: list[str] = []
    for scope in scopes:
        if path and scope.startswith(path[-1] + "."):
            scope = scope[len(path[-1]) + 1 :]
        path.append(scope)
    return ".".join(path)


def torch_conv():
    from torch import nn

    return nn.Conv2d


def load_qdq_weights(model, onnx_path: str):
    """Fill a ``CenterFaceNet(landmarks=False)`` from a QDQ plate model, all but the shared trunk.

    The trunk (features[0..3], the anonymous ``Conv_N`` nodes) stays as loaded from CenterFace's
    fp32 file: it is frozen in training and must equal the face model's bit for bit, or the joint
    face+plate model cannot be built (``tools/build_shared_model.py``)."""
    import torch

    convs, init = dequantized_initializers(onnx_path)
    mods = _modules_for(model, convs)
    folded = {id(up.deconv): up.bn for up in (model.up16, model.up8, model.up4)}
    for node, mod in zip(convs, mods, strict=True):
        if "//" not in node.name:  # shared trunk: keep CenterFace's fp32 weights
            continue
        w = init[node.input[1]]
        if tuple(w.shape) != tuple(mod.weight.shape):
            raise ValueError(f"{node.name}: {w.shape} vs {tuple(mod.weight.shape)}")
        mod.weight.data = torch.from_numpy(np.array(w, np.float32))
        bias = init[node.input[2]].astype(np.float32) if len(node.input) > 2 else None
        if id(mod) in folded:  # BN folded into the deconv: BN becomes identity plus that bias
            bn = folded[id(mod)]
            bn.weight.data.fill_(1.0)
            bn.running_mean.data.zero_()
            bn.running_var.data.fill_(1.0 - bn.eps)
            bn.bias.data = torch.from_numpy(bias if bias is not None else np.zeros(w.shape[1], np.float32))
        elif bias is not None:
            mod.bias.data = torch.from_numpy(bias)
    return model
