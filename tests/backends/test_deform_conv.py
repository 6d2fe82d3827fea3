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


def _run_ort(x, w, off, b, kernel, stride, pads, dilation, groups, og, mask=None):
    import onnxruntime as ort

    names = ["x", "w", "off", "b"] + (["mask"] if mask is not None else [])
    arrays = [a.astype(np.float32) for a in [x, w, off, b] + ([mask] if mask is not None else [])]
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


# ---- the reference is independent of the emitted code, and both agree with ONNX Runtime, mask included ----

def _case_arrays(case, with_mask: bool):
    _, c, o, h, w_, kernel, stride, pads, dilation, groups, og, scale = case
    rng = np.random.default_rng(len(case[0]) + 100 * with_mask)
    ho = _output_size(h, kernel[0], stride[0], pads[0], pads[2], dilation[0])
    wo = _output_size(w_, kernel[1], stride[1], pads[1], pads[3], dilation[1])
    x = rng.standard_normal((2, c, h, w_))
    weight = rng.standard_normal((o, c // groups) + kernel)
    bias = rng.standard_normal(o)
    off = rng.standard_normal((2, 2 * og * kernel[0] * kernel[1], ho, wo)) * scale
    mask = rng.uniform(0, 1, (2, og * kernel[0] * kernel[1], ho, wo)) if with_mask else None
    attrs = {"stride": stride, "pads": pads, "dilation": dilation, "groups": groups, "offset_groups": og}
    return x, off, weight, bias, mask, attrs


@pytest.mark.parametrize("with_mask", [False, True], ids=["v1", "modulated"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_reference_matches_the_emitted_code(case, with_mask):
    """The reference and torch_prelude.deform_conv2d (what --emit torch writes out) agree in float64."""
    from cnncomp.ops.torch_prelude import deform_conv2d

    x, off, weight, bias, mask, attrs = _case_arrays(case, with_mask)
    t = [None if a is None else torch.from_numpy(a) for a in (x, off, weight, bias, mask)]
    got = deform_conv2d_reference(t[0], t[1], t[2], t[3], attrs, t[4])
    emitted = deform_conv2d(t[0], t[1], t[2], t[3], attrs["stride"], attrs["pads"], attrs["dilation"],
                            attrs["groups"], attrs["offset_groups"], t[4])
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, emitted, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_modulated_reference_matches_onnxruntime(case):
    x, off, weight, bias, mask, attrs = _case_arrays(case, True)
    kernel = weight.shape[2:]
    got = deform_conv2d_reference(*(torch.from_numpy(a) for a in (x, off, weight, bias)), attrs,
                                  torch.from_numpy(mask)).numpy()
    want = _run_ort(x, weight, off, bias, kernel, attrs["stride"], attrs["pads"], attrs["dilation"], attrs["groups"],
                    attrs["offset_groups"], mask)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_one_bilinear_sample_by_hand():
    """A 1x1 kernel at offset (dy, dx) = (0.25, 0.5) with mask 0.5: the four neighbours weighted 3/8, 3/8, 1/8,
    1/8, then halved; on the last row the lower neighbours are outside and count as zero."""
    x = torch.arange(12, dtype=torch.float64).reshape(1, 1, 3, 4)
    off = torch.tensor([0.25, 0.5], dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 3, 4)
    mask = torch.full((1, 1, 3, 4), 0.5, dtype=torch.float64)
    attrs = {"stride": (1, 1), "pads": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1, "offset_groups": 1}
    got = deform_conv2d_reference(x, off, torch.ones(1, 1, 1, 1, dtype=torch.float64), None, attrs, mask)
    v = x[0, 0]
    top_left = 0.5 * (0.375 * v[0, 0] + 0.375 * v[0, 1] + 0.125 * v[1, 0] + 0.125 * v[1, 1])
    last_row = 0.5 * (0.375 * v[2, 1] + 0.375 * v[2, 2])
    right_edge = 0.5 * (0.375 * v[0, 3] + 0.125 * v[1, 3])
    assert float(got[0, 0, 0, 0]) == pytest.approx(float(top_left))
    assert float(got[0, 0, 2, 1]) == pytest.approx(float(last_row))
    assert float(got[0, 0, 0, 3]) == pytest.approx(float(right_edge))


def test_reference_does_not_use_the_emitted_code(monkeypatch):
    """The check compares two implementations: the reference must not call the prelude's deform_conv2d."""
    import cnncomp.ops.torch_prelude as prelude

    def refuse(*args, **kwargs):
        raise AssertionError("the reference called torch_prelude.deform_conv2d")

    monkeypatch.setattr(prelude, "deform_conv2d", refuse)
    x, off, weight, bias, mask, attrs = _case_arrays(CASES[0], True)
    got = deform_conv2d_reference(*(torch.from_numpy(a) for a in (x, off, weight, bias)), attrs,
                                  torch.from_numpy(mask))
    assert got.shape == (2, 3, 5, 6)


def test_reference_keeps_a_float32_input_float32():
    x, off, weight, bias, _, attrs = _case_arrays(CASES[0], False)
    got = deform_conv2d_reference(*(torch.from_numpy(a).float() for a in (x, off, weight, bias)), attrs)
    assert got.dtype == torch.float32
