"""ONNX node patterns back to layers: small PyTorch modules exported, imported, compiled, compared.

Each case is a module whose export (opset 17, TorchScript exporter) holds one
pattern of docs/import.md; the test checks the layer it imports as and that
the imported spec, compiled with the imported weights, computes what the
module computes. A pattern whose layer is not registered in this cnncomp yet
skips, saying so ("op X not registered yet"), and starts running when it is.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
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
from cnncomp.cli import main  # noqa: E402
from cnncomp.errors import CnnError  # noqa: E402
from cnncomp.pipeline import import_model  # noqa: E402
from cnncomp.ops.registry import get_op  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class ViewFlatten(nn.Module):
    """x.view(x.size(0), -1): a Shape-Gather-Unsqueeze-Concat subgraph feeding Reshape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 5 * 5, 6)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.view(y.size(0), -1))


class ChannelShuffle(nn.Module):
    """torchvision's shufflenet channel_shuffle: view, transpose(1, 2), view."""

    def forward(self, x):
        n, c, h, w = x.size()
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.gate = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return torch.cat([x + y, x * torch.sigmoid(self.gate(y))], 1)


def conv_then(*layers, cin=3):
    return nn.Sequential(nn.Conv2d(cin, 4, 3), *layers)


# name: (module, input shape, the layer the import must contain, a layer it needs registered or None)
CASES = {
    "conv_bn_relu": (nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=(1, 2), dilation=(1, 2), bias=False),
                                   nn.BatchNorm2d(4), nn.ReLU()), (2, 3, 9, 11), "conv(", None),
    "grouped_conv1d": (nn.Conv1d(4, 8, 3, groups=2), (2, 4, 10), "g=2", None),
    "conv3d": (nn.Conv3d(2, 3, 3, padding=1), (1, 2, 4, 5, 5), "conv(3, 3, p=1)", None),
    "view_flatten": (ViewFlatten(), (2, 3, 7, 7), "flatten", None),
    "linear_matmul_add": (nn.Linear(16, 5), (2, 3, 16), "linear(5)", None),
    "relu6": (conv_then(nn.ReLU6()), (1, 3, 6, 6), "relu6", None),
    "silu": (conv_then(nn.SiLU()), (1, 3, 6, 6), "silu", None),
    "gelu": (conv_then(nn.GELU()), (1, 3, 6, 6), "gelu", None),
    "hardswish": (conv_then(nn.Hardswish()), (1, 3, 6, 6), "hardswish", None),
    "hardsigmoid": (conv_then(nn.Hardsigmoid()), (1, 3, 6, 6), "hardsigmoid", None),
    "leaky_elu_tanh": (conv_then(nn.LeakyReLU(0.2), nn.ELU(0.5), nn.Tanh()), (1, 3, 6, 6), "leaky_relu(a=0.2)",
                       None),
    "prelu": (conv_then(nn.PReLU(4)), (1, 3, 6, 6), "prelu", None),
    "softmax": (nn.Sequential(nn.Flatten(), nn.Linear(27, 5), nn.LogSoftmax(1)), (2, 3, 3, 3), "log_softmax",
                None),
    "pools": (nn.Sequential(nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.AvgPool2d(2, 1, 1, count_include_pad=True),
                            nn.AvgPool2d(3, 2, 1, ceil_mode=True)), (1, 2, 11, 11), "count_pad=true", None),
    "global_max": (nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten()), (2, 3, 5, 5), "gmp", None),
    "group_norm": (conv_then(nn.GroupNorm(2, 4)), (2, 3, 6, 6), "gn(2)", None),
    "channel_shuffle": (ChannelShuffle(), (2, 6, 3, 3), "shuffle(2)", None),
    "merges": (Residual(), (1, 4, 5, 5), "concat", None),
    "upsample_nearest": (nn.Upsample(scale_factor=2, mode="nearest"), (1, 2, 3, 4), "upsample", None),
    "upsample_bilinear": (nn.Upsample(scale_factor=2, mode="bilinear"), (1, 2, 3, 4), "mode=\"linear\"", None),
    "zero_pad": (nn.ZeroPad2d((1, 2, 3, 0)), (1, 2, 4, 4), "pad(", None),
    "slice": (Lambda(lambda x: x[:, 1:3]), (1, 4, 3, 3), "slice(1, 3)", None),
    "conv_transpose": (nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), (1, 4, 5, 5),
                       "conv_transpose(", "conv_transpose"),
    "pixel_shuffle": (nn.PixelShuffle(2), (1, 8, 3, 3), "pixel_shuffle(2)", "pixel_shuffle"),
    "pixel_unshuffle": (nn.PixelUnshuffle(2), (1, 2, 4, 6), "pixel_unshuffle(2)", "pixel_unshuffle"),
    "mish": (conv_then(nn.Mish()), (1, 3, 6, 6), "mish", "mish"),
    "selu": (conv_then(nn.SELU()), (1, 3, 6, 6), "selu", "selu"),
    "reflect_pad": (nn.ReflectionPad2d(1), (1, 2, 4, 4), "mode=\"reflect\"", "pad(mode)"),
    "replicate_pad": (nn.ReplicationPad2d((1, 0, 2, 1)), (1, 2, 4, 4), "mode=\"replicate\"", "pad(mode)"),
}


def registered(need: str) -> bool:
    """'op' or 'op(param)': whether this cnncomp has the layer (and that argument of it)."""
    name, _, param = need.partition("(")
    op = get_op(name)
    return op is not None and (not param or any(p.name == param.rstrip(")") for p in op.params))


def export(module, shape, path: Path, opset: int = 17) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), opset_version=opset, dynamo=False, input_names=["x"],
                          output_names=["y"])
    return x


@pytest.mark.parametrize("case", sorted(CASES))
def test_pattern_imports_as_its_layer_and_computes_the_same(case, tmp_path):
    module, shape, expected, needs = CASES[case]
    if needs is not None and not registered(needs):
        pytest.skip(f"op {needs} not registered yet")
    torch.manual_seed(0)
    module = module.eval()
    for m in module.modules():  # non-trivial norms
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
    x = export(module, shape, tmp_path / "m.onnx")
    result = cnncomp.import_onnx(tmp_path / "m.onnx", tmp_path / "m.cnn")
    assert expected in result.text, result.text
    compiled = cnncomp.compile(tmp_path / "m.cnn", weights=tmp_path / "m.safetensors", opt_level=0)
    session = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


def test_batch_norm_alone_is_kept_as_bn(tmp_path):
    """A batch norm that follows no conv stays a bn layer with PyTorch's weight names."""
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    export(module, (1, 3, 5, 5), tmp_path / "m.onnx")
    result = import_model(tmp_path / "m.onnx")
    assert "bn as \"2\"" in result.text or "bn as 2" in result.text, result.text
    assert {"2.weight", "2.bias", "2.running_mean", "2.running_var"} <= set(result.weights)


# ---- unsupported models, bad files, the command line ------------------------------------


def unsupported_model(path: Path) -> None:
    """x -> Sin -> Cos -> Sin -> Relu: two Sin nodes, one Cos node, no layer for either."""
    nodes = [helper.make_node("Sin", ["x"], ["a"], name="first_sin"),
             helper.make_node("Cos", ["a"], ["b"], name="the_cos"),
             helper.make_node("Sin", ["b"], ["c"], name="second_sin"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_unsupported_model_lists_every_op_type_and_writes_nothing(tmp_path, capsys):
    unsupported_model(tmp_path / "m.onnx")
    assert main(["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.cnn")]) == 1
    err = capsys.readouterr().err
    assert "3 nodes of 2 op types have no layer" in err
    assert "Sin: 2 nodes, first 'first_sin'" in err
    assert "Cos: 1 node, first 'the_cos'" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cli_writes_spec_and_weights_beside_or_where_asked(tmp_path, capsys):
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    export(module, (1, 3, 5, 5), tmp_path / "m.onnx")
    assert main(["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "net.cnn")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "net.cnn").read_text().splitlines()[1] == "network net"
    assert (tmp_path / "net.safetensors").is_file()
    assert main(["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "b.cnn"),
                 "--weights-out", str(tmp_path / "w.safetensors")]) == 0
    assert (tmp_path / "w.safetensors").is_file() and not (tmp_path / "b.safetensors").exists()
    assert main(["check", str(tmp_path / "b.cnn")]) == 0


def test_cli_errors(tmp_path, capsys):
    assert main(["import", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "m.cnn")]) == 1
    assert "no such ONNX model file" in capsys.readouterr().err
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert main(["import", str(tmp_path / "junk.onnx"), "-o", str(tmp_path / "m.cnn")]) == 1
    assert "not a readable ONNX model" in capsys.readouterr().err
    unsupported_model(tmp_path / "u.onnx")
    assert main(["import", str(tmp_path / "u.onnx"), "-o", str(tmp_path / "no" / "m.cnn")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "u.onnx"), "-o", str(tmp_path / "m.cnn"),
                 "--weights-out", str(tmp_path / "m.cnn")]) == 1
    assert "both be written to" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["import", str(tmp_path / "junk.onnx")])  # no -o: bad usage
    assert exit_.value.code == 2
    assert not (tmp_path / "m.cnn").exists()


def test_import_command_runs_as_a_program(tmp_path):
    unsupported_model(tmp_path / "m.onnx")
    proc = subprocess.run([sys.executable, "-m", "cnncomp", "import", str(tmp_path / "m.onnx"), "-o",
                           str(tmp_path / "m.cnn")], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1 and "Sin: 2 nodes" in proc.stderr and "Traceback" not in proc.stderr


def test_view_flatten_with_a_dynamic_batch_folds_its_shape_subgraph(tmp_path):
    """Shape -> Gather(0) -> Unsqueeze -> Concat([., -1]) -> Reshape with batch N: a flatten, not an error."""
    module = ViewFlatten().eval()
    x = torch.randn(3, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(tmp_path / "m.onnx"), opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}})
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert {"Shape", "Gather", "Reshape"} <= ops  # the subgraph is there to fold
    result = cnncomp.import_onnx(tmp_path / "m.onnx", tmp_path / "m.cnn")
    assert "input x: [batch, 3, 7, 7]" in result.text and "flatten" in result.text, result.text
    compiled = cnncomp.compile(tmp_path / "m.cnn", weights=tmp_path / "m.safetensors", opt_level=0)
    got = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-4, atol=1e-5)


def one_node_model(path: Path, node, in_shape, out_shape, initializers=()) -> None:
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("node, in_shape, out_shape, reason", [
    (helper.make_node("DepthToSpace", ["x"], ["y"], name="d2s", blocksize=2, mode="DCR"), [1, 8, 2, 2], [1, 2, 4, 4],
     "DCR mode orders channels unlike pixel_shuffle"),
    (helper.make_node("SpaceToDepth", ["x"], ["y"], name="s2d", blocksize=2), [1, 2, 4, 4], [1, 8, 2, 2],
     "block offset before the channel"),
    (helper.make_node("Clip", ["x", "x"], ["y"], name="clip"), [1, 2, 4, 4], [1, 2, 4, 4],
     "its minimum is computed at run time"),  # a Clip with constant bounds is a clip layer now
    (helper.make_node("Transpose", ["x"], ["y"], name="tr", perm=[1, 0, 2, 3]), [1, 2, 4, 4], [2, 1, 4, 4],
     "moves the batch axis; permute keeps it first"),
    (helper.make_node("MatMul", ["x", "x"], ["y"], name="mm"), [4, 4], [4, 4], "constant 2-D weight"),
    (helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", mode="nearest",  # other nearest modes read
                      coordinate_transformation_mode="tf_crop_and_resize"), [1, 2, 4, 4], [1, 2, 8, 8],
     "not F.interpolate's nearest"),
])
def test_refused_patterns_say_why(tmp_path, node, in_shape, out_shape, reason):
    consts = [onnx.numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
              onnx.numpy_helper.from_array(np.array(1.0, np.float32), "hi"),
              onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    one_node_model(tmp_path / "m.onnx", node, in_shape, out_shape, [c for c in consts if c.name in node.input])
    with pytest.raises(CnnError) as err:
        import_model(tmp_path / "m.onnx")
    assert f"{node.op_type}: 1 node, first '{node.name}'" in err.value.message
    assert reason in err.value.message


def test_gemm_without_transposed_weight_and_with_alpha(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10  # [in, out]: transB=0
    b = np.array([1.0, -1.0, 0.5], np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", alpha=2.0, beta=0.5)
    one_node_model(tmp_path / "m.onnx", node, ["N", 4], ["N", 3],
                   [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    result = import_model(tmp_path / "m.onnx")
    assert "linear(3) as fc" in result.text
    np.testing.assert_array_equal(result.weights["fc.weight"], 2.0 * w.T)
    np.testing.assert_array_equal(result.weights["fc.bias"], 0.5 * b)


@pytest.mark.parametrize("with_mask", [False, True], ids=["dcn", "dcnv2_mask"])
def test_deform_conv_imports_with_its_offsets_and_mask(tmp_path, with_mask):
    if with_mask and not registered("deform_conv(mask)"):
        pytest.skip("op deform_conv(mask) not registered yet")
    rng = np.random.default_rng(0)
    w = rng.uniform(-0.3, 0.3, (6, 4, 3, 3)).astype(np.float32)
    b = rng.uniform(-0.1, 0.1, 6).astype(np.float32)
    ins = ["x", "w", "off", "b"] + (["mask"] if with_mask else [])
    node = helper.make_node("DeformConv", ins, ["y"], name="dcn", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6]),
              helper.make_tensor_value_info("off", TensorProto.FLOAT, [1, 18, 6, 6])]
    if with_mask:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 9, 6, 6]))
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 6, 6])],
                              [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = cnncomp.import_onnx(tmp_path / "m.onnx", tmp_path / "m.cnn")
    assert "deform_conv(off, 6, 3, p=1" in result.text, result.text
    compiled = cnncomp.compile(tmp_path / "m.cnn", weights=tmp_path / "m.safetensors", opt_level=0)
    feeds = {"x": rng.standard_normal((1, 4, 6, 6)).astype(np.float32),
             "off": rng.uniform(-1, 1, (1, 18, 6, 6)).astype(np.float32)}
    if with_mask:
        feeds["mask"] = rng.uniform(0, 1, (1, 9, 6, 6)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
           for m in (model, compiled)]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-5, atol=1e-6)
