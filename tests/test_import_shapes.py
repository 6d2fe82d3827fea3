"""Shapes on import: inference reruns after constant folding, an unknown dim is never the batch, and a shape
that cannot be inferred names the node where it was lost.

The modules copy what the zoos do: timm's dynamic "same" padding (pads computed from `x.size()`), and
torchvision's ShuffleNetV2 unit (`chunk`, then a channel shuffle whose view sizes come from `x.size()`),
both exported with a dynamic batch. Before inference was rerun, the dims after the first computed Slice or
Pad were unknown and folded as if they were the batch: the pads folded to zeros and the shuffle's view read
[N, 2, 1073741814, N, N].
"""

from __future__ import annotations

import math
import warnings

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
from cnncomp.frontend.onnx.model import SYMBOLIC_DIM, OnnxModel  # noqa: E402


def _same_padding(size, k: int, s: int):
    """timm's get_same_padding: a tensor while tracing, so the exporter writes the arithmetic out."""
    if isinstance(size, torch.Tensor):
        return torch.clamp(((size / s).ceil() - 1) * s + (k - 1) + 1 - size, min=0)
    return max((math.ceil(size / s) - 1) * s + (k - 1) + 1 - size, 0)


class SameConv(nn.Conv2d):
    """timm's Conv2dSame: F.pad by sizes computed from the input, then an unpadded conv."""

    def forward(self, x):
        ih, iw = x.size()[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        ph, pw = _same_padding(ih, k, s), _same_padding(iw, k, s)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def channel_shuffle(x, groups: int):
    n, c, h, w = x.size()
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)


class ShuffleUnit(nn.Module):
    """torchvision's InvertedResidual with stride 1: half the channels pass, half go through a branch."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch2 = nn.Sequential(nn.Conv2d(half, half, 1), nn.ReLU(), nn.Conv2d(half, half, 3, padding=1,
                                                                                        groups=half))

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch2(x2)), dim=1), 2)


class GhostGate(nn.Module):
    """timm's GhostNetV2 gate: a map computed at half size, resized to x.shape[-2:] (sizes from a Shape)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        gate = torch.sigmoid(self.conv(F.avg_pool2d(x, 2)))
        y = x * F.interpolate(gate, size=(x.shape[-2], x.shape[-1]), mode="nearest")
        return y.view(y.size(0), -1)  # reads the batch after the Resize


MODELS = {
    "resize_to_shape": GhostGate,
    "same_padding": lambda: nn.Sequential(SameConv(3, 8, 3, stride=2), nn.ReLU(), SameConv(8, 8, 5, stride=2,
                                                                                          groups=8),
                                          SameConv(8, 4, 5, stride=2)),
    "shuffle_units": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ShuffleUnit(8), ShuffleUnit(8),
                                           ShuffleUnit(8)),
}


def export_dynamic(module, x, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})


@pytest.mark.parametrize("case", sorted(MODELS))
def test_computed_pads_and_chunks_import_with_a_dynamic_batch(case, tmp_path):
    torch.manual_seed(0)
    module = MODELS[case]().eval()
    x = torch.randn(2, 3, 12 if case == "resize_to_shape" else 13, 11 if case != "resize_to_shape" else 10,
                    generator=torch.Generator().manual_seed(1))
    export_dynamic(module, x, tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "Shape" in ops  # the sizes are computed in the graph, as the zoos' exports compute them
    result = cnncomp.import_onnx(tmp_path / "m.onnx", tmp_path / "m.cnn")
    assert f"input x: [N, 3, {x.shape[2]}, {x.shape[3]}]" in result.text, result.text
    ops = [layer.op for layer in result.graph.layers()]
    if case == "shuffle_units":
        assert ops.count("shuffle") == 3, result.text
    elif case == "same_padding":
        assert "pad(" in result.text and "conv(4, 5, s=2)" in result.text, result.text
    else:
        assert "upsample" in ops and "flatten" in ops, result.text
    compiled = cnncomp.compile(tmp_path / "m.cnn", weights=tmp_path / "m.safetensors", opt_level=1)
    session = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (x, torch.cat([x, x.flip(0), x])):  # the batch stays dynamic
        with torch.no_grad():
            want = module(batch).numpy()
        got = session.run(None, {"x": batch.numpy()})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_an_unknown_dim_is_not_folded_as_the_batch():
    """Shape of a tensor whose dims inference lost stays a node; the declared batch folds to the marker."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"], name="nonzero"),  # [4, unknown]
             helper.make_node("Shape", ["nz"], ["nz_shape"], name="shape_of_unknown"),
             helper.make_node("Shape", ["x"], ["x_shape"], name="shape_of_x")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])],
                              [helper.make_tensor_value_info("nz_shape", TensorProto.INT64, [2]),
                               helper.make_tensor_value_info("x_shape", TensorProto.INT64, [4])])
    m = OnnxModel(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert m.shapes["nz"] == (4, None)
    assert m.const("nz_shape") is None
    assert m.const("x_shape").tolist() == [SYMBOLIC_DIM, 3, 2, 2]


def test_a_shape_inference_cannot_work_out_names_the_node_where_it_was_lost():
    """A Reshape to a target read from the data: its output's shape is unknown, and so the Slice after it
    cannot be read; the error names the Reshape."""
    target = helper.make_tensor("target", TensorProto.INT64, [4], [0, 0, 0, 0])
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], name="reduce", keepdims=0),
             helper.make_node("Cast", ["m"], ["mi"], name="cast", to=TensorProto.INT64),
             helper.make_node("Add", ["target", "mi"], ["t"], name="computed_target"),
             helper.make_node("Reshape", ["x", "t"], ["r"], name="data_reshape"),
             helper.make_node("Slice", ["r", "starts", "ends", "axes"], ["y"], name="slice")]
    inits = [target, onnx.numpy_helper.from_array(np.array([0], np.int64), "starts"),
             onnx.numpy_helper.from_array(np.array([1], np.int64), "ends"),
             onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    with pytest.raises(CnnError) as err:
        import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert "Slice: 1 node, first 'slice': dim 1 of the Slice's input is unknown: ONNX shape inference " \
           "loses it at node 'data_reshape' (Reshape)" in err.value.message, err.value.message
