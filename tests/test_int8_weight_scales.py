"""The quantizer's per-channel conv weight scales, computed by cnncomp and handed to quantize_static as
TensorQuantOverrides (int8.Quantizer._conv_weight_scales): the models are those quantize_static writes itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

pytest.importorskip("onnxruntime")

from cnncomp.pipeline import emit_model, optimize  # noqa: E402
from cnncomp.precision.calibration import seeded_calibration  # noqa: E402
from cnncomp.precision.int8 import Quantizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _both_ways(model: onnx.ModelProto, calibration: dict, activations: str = "uint8") -> tuple[bytes, bytes, int]:
    """(the model quantized with cnncomp's weight scales, the one quantize_static computes alone, overridden)."""
    quantizer = Quantizer(model, calibration, "minmax", activations)
    try:
        ours = quantizer.quantize().SerializeToString()
        count = len(quantizer._conv_weight_scales())
        quantizer._weight_scales = {}  # no overrides: quantize_static's own per-channel loop
        quantizer.ranges_changed()
        theirs = quantizer.quantize().SerializeToString()
    finally:
        quantizer.close()
    return ours, theirs, count


# 1-D (textcnn), grouped and depthwise (shufflenet), pixel shuffle (espcn), a linear head (lenet's Gemm keeps
# quantize_static's own scales)
@pytest.mark.parametrize("spec, activations", [("lenet", "uint8"), ("textcnn", "uint8"), ("espcn", "uint8"),
                                               ("shufflenet_v2_x1_0", "uint8"), ("shufflenet_v2_x1_0", "int8")])
def test_the_bundled_specs_quantize_to_the_same_bytes(spec, activations):
    """uint8 activations (ONNX Runtime's CPU kernels) and int8 symmetric ones (TensorRT's)."""
    compiled = optimize(str(ROOT / "specs" / f"{spec}.cnn"))
    ours, theirs, count = _both_ways(emit_model(compiled), seeded_calibration(compiled.ref_graph, 0, 2), activations)
    assert count > 0
    assert ours == theirs


def test_a_dead_channel_and_a_shared_weight():
    """A conv channel whose weights are all zero gets scale 1.0 as quantize_static gives it; a weight that
    another op reads too is left to quantize_static."""
    rng = np.random.default_rng(0)
    w0 = (rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32)
    w0[3] = 0.0
    w0[5] = 1e-30  # a range under float32's smallest normal: scale 1.0 too
    w1 = (rng.standard_normal((8, 8, 3, 3)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "w1"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Identity", ["w0"], ["w0_read"], name="read")]  # w0 read by another op too
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("w0_read", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calibration = {"x": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)}
    quantizer = Quantizer(model, calibration, "minmax", runtime=None)
    try:
        scales = quantizer._conv_weight_scales()
    finally:
        quantizer.close()
    assert set(scales) == {"w1"}  # w0 is read by the Identity too
    w1_scale, zero = scales["w1"]
    np.testing.assert_array_equal(zero, 0)
    np.testing.assert_allclose(w1_scale, np.abs(w1).reshape(8, -1).max(axis=1) / 127, rtol=1e-6)
    model.graph.node.pop()  # now only a conv reads w0: its dead channels are overridden as well
    model.graph.output.pop()
    ours, theirs, count = _both_ways(model, calibration)
    assert count == 2 and ours == theirs
