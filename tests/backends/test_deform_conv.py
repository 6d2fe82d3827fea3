"""The pure-torch deformable convolution against ONNX Runtime's DeformConv (opset 19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from cnncomp.ops.deform import deform_conv2d_reference

CASES = [
    # name: (C, O, H, W, kernel, stride, pads, dilation, groups, offset_groups, offset scale)
    ("plain", 2, 3, 5, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 1, 1.0),
    ("no_pad", 3, 4, 6, 5, (2, 2), (1, 1), (0, 0, 0, 0), (1, 1), 1, 1, 0.7),
    ("stride_dilation", 2, 2, 9, 8, (3, 2), (2, 1), (2, 1, 2, 1), (2, 3), 1, 1, 1.5),
    ("asymmetric_pads", 2, 3, 7, 7, (2, 2), (1, 1), (1, 0, 0, 1), (1, 1), 1, 1, 1.0),
    ("groups", 4, 6, 6, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, 1, 1.0),
    ("offset_groups", 4, 3, 6, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 2, 1.0),
    ("both_groups", 8, 4, 5, 5, (3, 1), (1, 2), (1, 0, 1, 0), (1, 1), 2, 4, 2.0),
    ("far_outside", 2, 2, 4, 4, (2, 2), (1, 1), (0, 0, 0, 0), (1, 1), 1, 1, 6.0),
]


def _output_size(n, k, s, pb, pe, d):
    return (n + pb + pe - d * (k - 1) - 1) // s + 1


def _run_ort(x, w, off, b, kernel, stride, pads, dilation, groups, og):
    import onnxruntime as ort

    names = ["x", "w", "off", "b"]
    arrays = [x, w, off, b]
    node = helper.make_node("DeformConv", names, ["y"], kernel_shape=list(kernel), strides=list(stride),
                            pads=list(pads), dilations=list(dilation), group=groups, offset_group=og)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape)
                                            for n, a in zip(names, arrays)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(names, arrays)))[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_deform_conv_matches_onnxruntime(case):
    _, c, o, h, w_, kernel, stride, pads, dilation, groups, og, scale = case
    rng = np.random.default_rng(len(case[0]))
    ho = _output_size(h, kernel[0], stride[0], pads[0], pads[2], dilation[0])
    wo = _output_size(w_, kernel[1], stride[1], pads[1], pads[3], dilation[1])
    x = rng.standard_normal((2, c, h, w_)).astype(np.float32)
    weight = rng.standard_normal((o, c // groups) + kernel).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    off = (rng.standard_normal((2, 2 * og * kernel[0] * kernel[1], ho, wo)) * scale).astype(np.float32)
    attrs = {"stride": stride, "pads": pads, "dilation": dilation, "groups": groups, "offset_groups": og}
    got = deform_conv2d_reference(*(torch.from_numpy(a) for a in (x, off, weight, bias)), attrs).numpy()
    want = _run_ort(x, weight, off, bias, kernel, stride, pads, dilation, groups, og)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_zero_offsets_are_a_convolution():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((2, 4, 7, 6)))
    weight = torch.from_numpy(rng.standard_normal((6, 2, 3, 3)))
    bias = torch.from_numpy(rng.standard_normal(6))
    off = torch.zeros(2, 2 * 9, 4, 3, dtype=torch.float64)
    attrs = {"stride": (2, 2), "pads": (1, 1, 1, 1), "dilation": (1, 1), "groups": 2, "offset_groups": 1}
    got = deform_conv2d_reference(x, off, weight, bias, attrs)
    torch.testing.assert_close(got, F.conv2d(x, weight, bias, 2, 1, 1, 2))


def test_integer_offsets_shift_the_samples():
    # A 1x1 kernel with offset (dy, dx) = (1, -1) reads x[h + 1, w - 1], zero outside.
    x = torch.arange(20, dtype=torch.float64).reshape(1, 1, 4, 5)
    off = torch.tensor([1.0, -1.0], dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 4, 5)
    attrs = {"stride": (1, 1), "pads": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1, "offset_groups": 1}
    got = deform_conv2d_reference(x, off, torch.ones(1, 1, 1, 1, dtype=torch.float64), None, attrs)
    want = torch.zeros_like(x)
    want[0, 0, :3, 1:] = x[0, 0, 1:, :4]
    torch.testing.assert_close(got, want)


def test_gradients_flow_to_input_offsets_and_weight():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((1, 2, 4, 4))).requires_grad_()
    off = torch.from_numpy(rng.uniform(-0.4, 0.4, (1, 8, 3, 3)) + 0.25).requires_grad_()
    weight = torch.from_numpy(rng.standard_normal((2, 2, 2, 2))).requires_grad_()
    attrs = {"stride": (1, 1), "pads": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1, "offset_groups": 1}
    assert torch.autograd.gradcheck(lambda a, b, c: deform_conv2d_reference(a, b, c, None, attrs), (x, off, weight))
