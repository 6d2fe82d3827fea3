"""Int8 models end in float32: no QuantizeLinear -> DequantizeLinear pair rounds a graph output, also when the
emitter's Identity gives the output its spec name (precision/int8.py `float_outputs`); and the same QDQ file runs
under OpenVINO as under ONNX Runtime (run/openvino.py shares the caller's arrays instead of copying them)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnncomp.pipeline import emit_model, optimize
from cnncomp.precision.int8 import float_outputs, quantize_int8, session_kernels
from cnncomp.run.openvino import INSTALL_HINT, OpenVinoSession, openvino_problem
from cnncomp.run.session import Session

NET = ("network small\ninput x: [N, 3, 16, 16]\n"
       "y = x -> conv(16, k=3, p=1) as c1 -> bn as b1 -> relu -> conv(16, k=3, p=1) as c2 -> bn as b2 -> relu\n"
       "   -> conv(32, k=3, s=2, p=1) as c3 -> relu -> gap as pool -> flatten as flat -> linear(10) as fc\n"
       "output y\n")


def samples(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def small_int8(tmp_path_factory):
    spec = tmp_path_factory.mktemp("int8") / "small.cnn"
    spec.write_text(NET)
    compiled = optimize(str(spec))
    model, report = quantize_int8(emit_model(compiled), compiled.graph, compiled.ref_graph, compiled.ref_weights,
                                  {"x": samples(16)})
    return model, report


def pair_model(through_identity: bool, extra_reader: bool = False, pair: bool = True) -> onnx.ModelProto:
    """x -> Relu -> Q -> DQ [-> Identity] -> y, with its scale and zero point as initializers (without the pair:
    the float model it stands for)."""
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    zero = numpy_helper.from_array(np.array(128, np.uint8), "z")
    last = "d" if through_identity else "y"
    nodes = [helper.make_node("Relu", ["x"], ["r" if pair else last], name="relu")]
    if pair:
        nodes += [helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"], name="q"),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], [last], name="dq")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    if through_identity:
        nodes.append(helper.make_node("Identity", ["d"], ["y"], name="y"))
    if extra_reader:  # the dequantized tensor is read by another node too: the pair must stay
        nodes.append(helper.make_node("Neg", [last], ["n"], name="neg"))
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, [1, 4]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], outputs,
                              [scale, zero] if pair else [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("through_identity", [False, True])
def test_float_outputs_drops_the_pair_in_front_of_an_output(through_identity):
    model = float_outputs(pair_model(through_identity), pair_model(through_identity, pair=False))
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Relu"] + ["Identity"] * through_identity
    assert not model.graph.initializer  # the pair's scale and zero point went with it
    x = np.array([[-1.0, 0.123, 2.0, 30.0]], np.float32)  # 30 is beyond the pair's range (0..6.35): not clipped
    assert np.array_equal(Session(model, "cpu").run({"x": x})["y"], np.maximum(x, 0))


def test_float_outputs_keeps_a_pair_whose_dequantized_tensor_another_node_reads():
    model = float_outputs(pair_model(True, extra_reader=True), pair_model(True, extra_reader=True, pair=False))
    assert [n.op_type for n in model.graph.node].count("QuantizeLinear") == 1


def test_float_outputs_keeps_a_pair_that_stands_for_a_folded_relu():
    """ONNX Runtime's quantizer drops a Relu whose range the uint8 zero point clips: the Q/DQ pair is the Relu."""
    folded = pair_model(True)
    folded.graph.node[0].op_type = "Neg"  # r is now made by the op before the (folded) Relu
    assert float_outputs(folded, pair_model(True, pair=False)).graph.node[1].op_type == "QuantizeLinear"


def test_int8_output_after_a_residual_relu_stays_rectified(tmp_path):
    spec = tmp_path / "r.cnn"
    spec.write_text("network r\ninput x: [N, 3, 8, 8]\ny = x -> conv(8, k=3, p=1) -> relu -> conv(3, k=1)\n"
                    "z = (x + y) -> relu\noutput z\n")
    compiled = optimize(str(spec))
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    model, report = quantize_int8(emit_model(compiled), compiled.graph, compiled.ref_graph, compiled.ref_weights,
                                  {"x": x})
    assert report.error < 0.02
    assert Session(model, "cpu").run({"x": x[:4]})["z"].min() >= 0  # the Relu folded into the pair is still there


def test_int8_network_output_is_written_by_the_int8_gemm_in_float(small_int8):
    model, report = small_int8
    producer = {o: n for n in model.graph.node for o in n.output}
    identity = producer["y"]
    assert identity.op_type == "Identity" and producer[identity.input[0]].op_type == "Gemm"
    kernels = session_kernels(model)  # QGemm writes float32 itself: no DequantizeLinear after it
    assert kernels.get("QGemm") == 1 and "DequantizeLinear" not in kernels and "Gemm" not in kernels
    read = {name for n in model.graph.node for name in n.input}
    assert all(t.name in read for t in model.graph.initializer)
    assert report.error < 0.01


needs_openvino = pytest.mark.skipif(openvino_problem() is not None,
                                    reason=f"OpenVINO not installed ({INSTALL_HINT})")


@needs_openvino
def test_openvino_runs_the_int8_file_like_onnx_runtime(small_int8):
    model, _ = small_int8
    x = samples(4, seed=7)
    expected = Session(model, "cpu").run({"x": x})["y"]
    session = OpenVinoSession(model, "int8", threads=1)
    got = session.run({"x": x})["y"]
    # the same int8 arithmetic, rounded in places that differ by one step at most
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.02


@needs_openvino
def test_openvino_outputs_are_the_callers_and_inputs_are_read_as_given(small_int8):
    model, _ = small_int8
    session = OpenVinoSession(model, "int8", threads=1)
    a, b = samples(2, seed=3), samples(2, seed=4)
    first = session.run({"x": a})["y"]
    kept = first.copy()
    session.run({"x": b})  # the request's output buffer is reused: the first answer must not change
    assert np.array_equal(first, kept)
    wide = np.zeros((2, 3, 16, 32), np.float32)
    wide[..., ::2] = a
    assert np.array_equal(session.run({"x": wide[..., ::2]})["y"], kept)  # a strided view, shared or not
    assert np.allclose(session.run({"x": a.astype(np.float64)})["y"], kept, rtol=1e-5, atol=1e-6)
