"""The patterns of the newer layers and of ops written out element-wise (issue 17): exported PyTorch
modules imported, compiled and compared with the module, as in tests/test_import_patterns.py.

Covered: mean/sum heads and squeeze-and-excitation, chunk/split, permute and channels-last layer norm
(ConvNeXt), layer scale and other constant Mul/Add/Sub/Div (scale, shift, folded into a conv's bias or a
linear's rows), Clip as clip, hardswish and hardsigmoid written out, Paddle's HardSigmoid(0.2, 0.5), a
tensor Sub/Div/Neg, an Expand before a broadcasting Mul (ECA, SE), a permute before a flatten.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
nn = torch.nn
F = torch.nn.functional

import cnncomp  # noqa: E402
from cnncomp.errors import CnnError  # noqa: E402
from cnncomp.pipeline import import_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_import_patterns import Lambda, conv_then, export  # noqa: E402


class SqueezeExcite(nn.Module):
    """timm's SqueezeExcite: x.mean((2, 3), keepdim=True), two 1x1 convs, a gate."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1)

    def forward(self, x):
        s = self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s).expand_as(x)


class ConvNeXtBlock(nn.Module):
    """timm's ConvNeXt block with channels-last MLP: dw conv, permute, LayerNorm, Linear, GELU, Linear,
    layer scale (gamma), permute back, residual."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(c, 3 * c), nn.Linear(3 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """A conv without bias, its bias added apart (Paddle's export), then a constant per-channel Mul."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bias = nn.Parameter(torch.rand(4) - 0.5)
        self.gain = nn.Parameter(torch.rand(4) + 0.5)

    def forward(self, x):
        y = self.conv(x) + self.bias.reshape(1, -1, 1, 1)
        return F.relu(y) * self.gain.reshape(-1, 1, 1)


class SplitHead(nn.Module):
    """A static chunk (Split), a branch per part, a mean head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        a, b = torch.split(self.conv(x), [2, 4], dim=1)
        return torch.cat([a, self.branch(b)], 1).mean((2, 3))


class FaceHead(nn.Module):
    """A face detector's head: permute(0, 3, 2, 1) before the flatten."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 4 * 5, 6)

    def forward(self, x):
        return self.fc(self.conv(x).permute(0, 3, 2, 1).flatten(1))


class Eca(nn.Module):
    """timm's EcaModule: a 1-D conv over the channels of the pooled means, a sigmoid gate."""

    def __init__(self, k: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x):
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = torch.sigmoid(self.conv(y)).view(x.shape[0], -1, 1, 1)
        return x * y.expand_as(x)


# name: (module, input shape, text the import must contain, text it must not contain)
CASES = {
    "se_block_gap_expand": (conv_then(SqueezeExcite()), (1, 3, 7, 7), "gap", "Expand"),
    "mean_head": (nn.Sequential(nn.Conv2d(3, 4, 3), Lambda(lambda x: x.mean((2, 3)))), (2, 3, 6, 6),
                  "mean", None),
    "sum_keepdim": (conv_then(Lambda(lambda x: x.sum(1, keepdim=True))), (1, 3, 6, 6), "sum(axes=1, keepdims=true)",
                    None),
    "split": (SplitHead(), (2, 3, 5, 5), "split((2, 4)", None),
    "convnext_block": (ConvNeXtBlock(), (1, 4, 5, 5), "layer_norm(axes=3, eps=1e-06)", "scale"),
    "conv_bias_and_layer_scale": (LayerScale(), (1, 3, 6, 6), "scale", "shift"),
    "scalar_affine": (conv_then(Lambda(lambda x: (x * 2.5 - 1.0) / 4.0 + 0.25)), (1, 3, 5, 5), "shift", None),
    "clip": (conv_then(Lambda(lambda x: torch.clamp(x, -0.5, 0.75))), (1, 3, 5, 5), "clip(min=-0.5, max=0.75)",
             None),
    "hardswish_written_out": (conv_then(Lambda(lambda x: x * F.relu6(x + 3) / 6)), (1, 3, 5, 5), "hardswish",
                              "relu6"),
    "hardswish_gate_first": (conv_then(Lambda(lambda x: x * (F.relu6(x + 3.0) / 6.0))), (1, 3, 5, 5), "hardswish",
                             "relu6"),
    "hardsigmoid_written_out": (conv_then(Lambda(lambda x: F.relu6(x + 3) / 6)), (1, 3, 5, 5), "hardsigmoid",
                                "relu6"),
    "tensor_sub_div_neg": (conv_then(Lambda(lambda x: -((x - torch.sigmoid(x)) / (torch.sigmoid(x) + 1)))),
                           (1, 3, 5, 5), "div", None),
    "eca": (nn.Sequential(nn.Conv2d(3, 6, 3), Eca(5)), (2, 3, 6, 6), "conv(6, 1, bias=false)", None),
    "squeeze_head": (conv_then(Lambda(lambda x: x.mean((2, 3), keepdim=True).squeeze(-1).squeeze(-1))),
                     (2, 3, 5, 5), "flatten", None),
    "permute_before_flatten": (FaceHead(), (2, 3, 6, 7), "permute((0, 3, 2, 1))", None),
    "conv_transpose_bias_apart": (Lambda(lambda x: F.conv_transpose2d(x, torch.linspace(-1, 1, 4 * 3 * 9).reshape(
        4, 3, 3, 3), stride=2) + torch.tensor([0.5, -0.25, 1.0]).reshape(1, 3, 1, 1)), (1, 4, 3, 3),
        "conv_transpose(3, 3, s=2)", "shift"),
}


def run_and_compare(module, shape, tmp_path):
    x = export(module, shape, tmp_path / "m.onnx")
    result = cnncomp.import_onnx(tmp_path / "m.onnx", tmp_path / "m.cnn")
    compiled = cnncomp.compile(tmp_path / "m.cnn", weights=tmp_path / "m.safetensors", opt_level=0)
    session = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    return result


@pytest.mark.parametrize("case", sorted(CASES))
def test_pattern_imports_as_its_layers_and_computes_the_same(case, tmp_path):
    module, shape, expected, absent = CASES[case]
    torch.manual_seed(0)
    result = run_and_compare(module.eval(), shape, tmp_path)
    assert expected in result.text, result.text
    if absent:
        assert absent not in result.text, result.text


def test_a_conv_bias_added_apart_becomes_the_conv_bias(tmp_path):
    torch.manual_seed(0)
    module = LayerScale().eval()
    result = run_and_compare(module, (1, 3, 6, 6), tmp_path)
    np.testing.assert_allclose(result.weights["conv.bias"], module.bias.detach().numpy(), rtol=1e-6)
    assert [layer.op for layer in result.graph.layers()] == ["input", "conv", "relu", "scale"], result.text


def paddle_hardsigmoid(path: Path) -> None:
    """PaddlePaddle's hardsigmoid export: HardSigmoid(alpha=0.2, beta=0.5), relu6 as Clip, a Div by 6."""
    nodes = [helper.make_node("HardSigmoid", ["x"], ["h"], name="hard_sigmoid_0", alpha=0.2, beta=0.5),
             helper.make_node("Clip", ["h", "zero", "six"], ["c"], name="clip_0"),
             helper.make_node("Div", ["c", "six"], ["y"], name="div_0")]
    inits = [onnx.numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("zero", 0.0), ("six", 6.0))]
    graph = helper.make_graph(nodes, "paddle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_paddle_hardsigmoid_and_relu6_clip_and_div_by_a_constant(tmp_path):
    paddle_hardsigmoid(tmp_path / "m.onnx")
    result = cnncomp.import_onnx(tmp_path / "m.onnx", tmp_path / "m.cnn")
    assert "hardsigmoid(alpha=0.2) as hard_sigmoid_0" in result.text, result.text
    assert "relu6 as clip_0" in result.text and "scale as div_0" in result.text, result.text
    compiled = cnncomp.compile(tmp_path / "m.cnn", weights=tmp_path / "m.safetensors", opt_level=1)
    x = np.random.default_rng(0).uniform(-5, 5, (1, 3, 4, 4)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for m in (onnx.load(str(tmp_path / "m.onnx")), compiled)]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("const_shape, reason", [
    ((1, 3, 4, 4), "Mul with a constant of shape [1, 3, 4, 4] on a tensor of shape [1, 3, 4, 4]: only one per "
                   "channel or a scalar is a layer"),
    ((4,), "Mul with a constant of shape [4]"),  # broadcasts along W, not the channels
])
def test_a_constant_that_is_not_per_channel_is_refused_with_the_reason(tmp_path, const_shape, reason):
    c = np.linspace(0.5, 1.5, int(np.prod(const_shape)), dtype=np.float32).reshape(const_shape)
    node = helper.make_node("Mul", ["x", "c"], ["y"], name="mul")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [onnx.numpy_helper.from_array(c, "c")])
    with pytest.raises(CnnError) as err:
        import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert reason in err.value.message, err.value.message


def test_refused_ops_say_the_nearest_thing_the_language_has(tmp_path):
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], name="channel_max", axes=[1], keepdims=1),
             helper.make_node("Unsqueeze", ["m", "axes"], ["y"], name="unsqueeze")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 4, 4])],
                              [onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")])
    with pytest.raises(CnnError) as err:
        import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert "ReduceMax: 1 node, first 'channel_max': no layer of the language computes it; nearest in the " \
           "language: gmp (the max over the spatial axes)" in err.value.message, err.value.message
    assert "Unsqueeze: 1 node, first 'unsqueeze': no layer of the language computes it; nearest in the " \
           "language: no layer adds an axis" in err.value.message


@pytest.mark.parametrize("mode, coordinates, nearest_mode, expected", [
    ("nearest", "half_pixel", "round_prefer_ceil", 'mode="nearest-exact"'),  # PyTorch's nearest-exact
    ("nearest", "half_pixel", "round_prefer_floor", 'coordinates="half_pixel", rounding="round_prefer_floor"'),
    ("nearest", "asymmetric", "round_prefer_floor", 'coordinates="asymmetric"'),  # TensorFlow's
    ("linear", "asymmetric", None, 'coordinates="asymmetric"'),
])
def test_resize_variants_of_other_exporters(tmp_path, mode, coordinates, nearest_mode, expected):
    attrs = {"mode": mode, "coordinate_transformation_mode": coordinates}
    if nearest_mode:
        attrs["nearest_mode"] = nearest_mode
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 10, 18])],
                              [onnx.numpy_helper.from_array(np.array([1, 1, 2, 3], np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = cnncomp.import_onnx(tmp_path / "m.onnx", tmp_path / "m.cnn")
    assert expected in result.text, result.text
    compiled = cnncomp.compile(tmp_path / "m.cnn", weights=tmp_path / "m.safetensors", opt_level=0)
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 6)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for m in (model, compiled)]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-6, atol=1e-6)


def detector_head(path: Path) -> None:
    """YOLOX's Focus stem (four Slices with step 2 over H then W, concatenated on the channels) and a detection
    head's Reshape to [N, C, -1] (YOLOX, PicoDet), as their exporters write them: ends of INT64_MAX."""
    big = np.iinfo(np.int64).max
    inits = [onnx.numpy_helper.from_array(np.array([v], np.int64), n)
             for n, v in (("zero", 0), ("one", 1), ("end", big), ("two", 2), ("three", 3))]
    inits.append(onnx.numpy_helper.from_array(np.array([1, 12, -1], np.int64), "flat"))
    nodes = []
    for i, (row, col) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        starts = {0: "zero", 1: "one"}
        nodes += [helper.make_node("Slice", ["x", starts[row], "end", "two", "two"], [f"r{i}"], name=f"rows{i}"),
                  helper.make_node("Slice", [f"r{i}", starts[col], "end", "three", "two"], [f"p{i}"], name=f"cols{i}")]
    nodes += [helper.make_node("Concat", [f"p{i}" for i in range(4)], ["focus"], name="focus", axis=1),
              helper.make_node("Reshape", ["focus", "flat"], ["y"], name="flatten_grid")]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 15])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))


def test_strided_slices_and_a_reshape_keeping_n_and_c_of_a_detector(tmp_path):
    detector_head(tmp_path / "m.onnx")
    result = cnncomp.import_onnx(tmp_path / "m.onnx", tmp_path / "m.cnn")
    assert "slice(1, 6, axis=2, step=2) as rows1" in result.text, result.text
    assert "slice(0, 10, axis=3, step=2) as cols0" in result.text, result.text
    assert "flatten(axis=2, keep_leading=true) as flatten_grid" in result.text, result.text
    compiled = cnncomp.compile(tmp_path / "m.cnn", weights=tmp_path / "m.safetensors", opt_level=1)
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 10)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for m in (onnx.load(str(tmp_path / "m.onnx")), compiled)]
    assert run[1].shape == (1, 12, 15)
    np.testing.assert_array_equal(run[1], run[0])


@pytest.mark.parametrize("module, shape, expected", [
    (conv_then(Lambda(lambda x: x[:, :, 1::2, ::3])), (2, 3, 7, 8), "slice(1, 5, axis=2, step=2)"),
    (conv_then(Lambda(lambda x: x.flatten(2))), (2, 3, 5, 6), "flatten(axis=2, keep_leading=true)"),
    (conv_then(Lambda(lambda x: x.reshape(x.shape[0], 4, -1))), (2, 3, 5, 6), "flatten(axis=2, keep_leading=true)"),
])
def test_strided_slice_and_flatten_keeping_leading_dims_from_pytorch(module, shape, expected, tmp_path):
    torch.manual_seed(0)
    result = run_and_compare(module.eval(), shape, tmp_path)
    assert expected in result.text, result.text


def test_a_slice_stepping_backwards_is_refused_with_the_reason(tmp_path):
    inits = [onnx.numpy_helper.from_array(np.array([v], np.int64), n)
             for n, v in (("start", 3), ("end", 0), ("axis", 2), ("step", -1))]
    node = helper.make_node("Slice", ["x", "start", "end", "axis", "step"], ["y"], name="reverse")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 3, 4])], inits)
    with pytest.raises(CnnError) as err:
        import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert "step -1; slice steps forward only" in err.value.message, err.value.message
