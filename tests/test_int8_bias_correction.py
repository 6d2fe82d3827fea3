"""int8 bias correction: the shift it computes is the mean effect of the int8 weights (checked by brute force
for convs of every stride/padding/dilation/group and for gemm), it lands in the QDQ model's int32 biases,
it lowers the held-out error where it should, and `auto` keeps it only where it lowers the error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

import cnncomp
from cnncomp.errors import UsageError
from cnncomp.pipeline import emit_model, optimize
from cnncomp.precision import bias_correction as bc
from cnncomp.precision.int8 import quantize_int8, session_kernels

# depthwise 3x3 kernels (9 weights per channel) after a relu: where rounding errors do not cancel
DEPTHWISE = ("network dwnet\ninput x: [N, 3, 24, 24]\n"
             "y = x -> conv(16, k=3, s=2, p=1) -> bn -> relu -> conv(16, k=3, p=1, g=16) -> bn -> relu\n"
             "      -> conv(32, k=1) -> bn -> relu -> conv(32, k=3, p=2, d=2, g=32, bias=false) -> relu\n"
             "      -> gap -> flatten -> linear(10)\n"
             "output y\n")


def conv_node(**attrs):
    return helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c", **attrs)


@pytest.mark.parametrize("attrs,groups,shape", [
    ({}, 1, (2, 4, 7, 7)),
    ({"pads": [1, 1, 1, 1], "strides": [2, 2]}, 1, (3, 4, 9, 8)),
    ({"pads": [2, 0, 2, 1], "dilations": [2, 2], "group": 4}, 4, (2, 4, 9, 9)),
    ({"pads": [1, 2], "strides": [3], "group": 2}, 2, (2, 4, 11)),
])
def test_output_shift_is_the_mean_effect_of_the_weight_error(attrs, groups, shape):
    rng = np.random.default_rng(0)
    rank = len(shape) - 2
    x = rng.normal(0.5, 1.0, shape)
    error = rng.normal(0, 0.01, (8, shape[1] // groups) + (3,) * rank)
    shift = bc._output_shift(conv_node(**attrs), error, x.mean(axis=0))
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d)[rank - 1]
    pads = attrs.get("pads", [0] * 2 * rank)
    padded = torch.nn.functional.pad(torch.from_numpy(x),
                                     [p for axis in reversed(range(rank)) for p in (pads[axis], pads[axis + rank])])
    brute = conv(padded, torch.from_numpy(error), stride=attrs.get("strides", [1] * rank),
                 dilation=attrs.get("dilations", [1] * rank), groups=groups)
    np.testing.assert_allclose(shift, brute.mean(dim=(0,) + tuple(range(2, rank + 2))).numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_output_shift_of_gemm(trans_b):
    rng = np.random.default_rng(1)
    x, error = rng.normal(1, 1, (5, 8)), rng.normal(0, 0.01, (3, 8))
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="g", alpha=0.5, transB=trans_b)
    shift = bc._output_shift(node, error if trans_b else error.T, x.mean(axis=0))
    np.testing.assert_allclose(shift, 0.5 * (x @ error.T).mean(axis=0))
    assert bc._output_shift(helper.make_node("Gemm", ["x", "w"], ["y"], transA=1), error, x.mean(axis=0)) is None


def _compiled(tmp_path, text=DEPTHWISE, seed=0):
    path = tmp_path / "net.cnn"
    path.write_text(text)
    compiled = optimize(str(path), seed=seed)
    return compiled, emit_model(compiled)


def _biases(model):
    """{conv/gemm node: its dequantized bias} of a QDQ model."""
    constants = bc._dequantized_constants(model)
    return {n.name: constants[n.input[2]][1].reshape(-1) for n in model.graph.node
            if n.op_type in bc.CORRECTED_OPS and len(n.input) > 2 and n.input[2] in constants}


def test_corrections_land_in_the_int32_biases_and_keep_the_int8_kernels(tmp_path):
    compiled, model = _compiled(tmp_path)
    plain, _ = quantize_int8(model, compiled.graph, compiled.ref_graph, compiled.ref_weights, bias_correction="off")
    corrected, report = quantize_int8(model, compiled.graph, compiled.ref_graph, compiled.ref_weights,
                                      bias_correction="on")
    assert any("bias correction applied to 5 layers" in note for note in report.notes)
    before, after = _biases(plain), _biases(corrected)
    assert len(before) == 4 and len(after) == 5  # the bias-less dilated depthwise conv was given one
    calibration = {"x": np.random.default_rng(0).uniform(-1, 1, (6, 3, 24, 24)).astype(np.float32)}
    shifts = bc.bias_corrections(model, plain, calibration)
    assert set(shifts) == set(after)
    for name, bias in before.items():
        scale = bc._dequantized_constants(plain)[next(n for n in plain.graph.node if n.name == name).input[2]][2]
        np.testing.assert_allclose(after[name], bias - shifts[name], atol=float(np.max(scale)) * 0.51)
        assert np.any(np.abs(after[name] - bias) > 0)
    kernels = session_kernels(corrected)
    assert kernels.get("QLinearConv") == 4 and "Conv" not in kernels  # still fused into int8 kernels


def test_bias_correction_lowers_the_held_out_error_of_a_depthwise_network(tmp_path):
    compiled, model = _compiled(tmp_path)
    calibration = {"x": np.random.default_rng(3).uniform(-1, 1, (32, 3, 24, 24)).astype(np.float32)}
    args = (model, compiled.graph, compiled.ref_graph, compiled.ref_weights, calibration)
    _, off = quantize_int8(*args, bias_correction="off")
    _, on = quantize_int8(*args, bias_correction="on")
    assert on.error < 0.95 * off.error, (off.error, on.error)


def test_auto_keeps_the_correction_only_where_it_lowers_the_error(tmp_path, monkeypatch):
    compiled, model = _compiled(tmp_path)
    args = (model, compiled.graph, compiled.ref_graph, compiled.ref_weights)
    plain, off = quantize_int8(*args, bias_correction="off")
    _, auto = quantize_int8(*args, bias_correction="auto")
    assert any("bias correction applied" in n for n in auto.notes), auto.notes
    real = bc.bias_corrections

    def harmful(*a, **k):  # shifts a hundred times too large: the error on calibration samples rises
        return {name: 100 * shift for name, shift in real(*a, **k).items()}

    monkeypatch.setattr("cnncomp.precision.int8.bias_corrections", harmful)
    kept, refused = quantize_int8(*args, bias_correction="auto")
    assert any("bias correction not applied" in n for n in refused.notes), refused.notes
    assert refused.error == off.error
    assert _biases(kept).keys() == _biases(plain).keys()
    for name, bias in _biases(plain).items():
        np.testing.assert_array_equal(_biases(kept)[name], bias)


def test_bias_correction_choices(tmp_path):
    compiled, model = _compiled(tmp_path)
    with pytest.raises(UsageError, match="unknown bias correction 'yes'"):
        quantize_int8(model, compiled.graph, compiled.ref_graph, compiled.ref_weights, bias_correction="yes")
    spec = tmp_path / "net.cnn"
    quantized = cnncomp.compile(str(spec), precision="int8", bias_correction="off", keep_slower_int8=True)
    assert isinstance(quantized, onnx.ModelProto)
    assert not any(t.name.endswith("_bias_correction_quantized") for t in quantized.graph.initializer)


@pytest.mark.parametrize("mode,said", [("on", "bias correction applied to 5 layers"), ("off", None)])
def test_compile_bias_correction_flag(tmp_path, capsys, mode, said):
    from cnncomp.cli import main

    spec = tmp_path / "net.cnn"
    spec.write_text(DEPTHWISE)
    out = tmp_path / "net.int8.onnx"
    assert main(["compile", str(spec), "--precision", "int8", "--bias-correction", mode, "-o", str(out),
                 "--verify", "--max-error", "0.05"]) == 0
    err = capsys.readouterr().err
    assert (said in err) if said else ("bias correction" not in err)
    assert out.exists()
