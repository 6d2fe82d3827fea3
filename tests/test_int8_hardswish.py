"""Int8 hard-swish under ONNX Runtime CPU (precision/int8_hardswish.py): DQ -> HardSwish -> Q rewritten as
QLinearAdd + QLinearMul, within one code of the float32 round trip on every input code, fused by ONNX Runtime,
refused where it would not hold; and the placement rule that keeps a conv in int8 before such a hard-swish."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cnncomp
from cnncomp.precision import int8_speed
from cnncomp.precision.int8 import layer_groups
from cnncomp.precision.int8_hardswish import hard_swish_sites, int8_hard_swish
from cnncomp.precision.int8_support import slower_in_int8

# (input scale, input zero point, output scale, output zero point): ranges a trained hard-swish sees
UINT8_SITES = [(0.05, 128, 0.03, 13), (0.1, 60, 0.08, 5), (0.02, 200, 0.025, 20), (0.04, 0, 0.04, 10)]
INT8_SITES = [(0.05, 0, 0.03, -115), (0.1, -60, 0.08, -123)]


def chain(scale_in, zero_in, scale_out, zero_out, dtype=np.uint8, extra_reader=False) -> onnx.ModelProto:
    """codes -> DequantizeLinear -> HardSwish -> QuantizeLinear -> codes (with `extra_reader`, a float32 Neg
    also reads the hard-swish)."""
    kind = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("DequantizeLinear", ["codes", "s_in", "z_in"], ["x"], name="dq"),
             helper.make_node("HardSwish", ["x"], ["h"], name="hswish"),
             helper.make_node("QuantizeLinear", ["h", "s_out", "z_out"], ["y"], name="q")]
    outputs = [helper.make_tensor_value_info("y", kind, [256])]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["h"], ["n"], name="neg"))
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, [256]))
    constants = [numpy_helper.from_array(np.array(scale_in, np.float32), "s_in"),
                 numpy_helper.from_array(np.array(zero_in, dtype), "z_in"),
                 numpy_helper.from_array(np.array(scale_out, np.float32), "s_out"),
                 numpy_helper.from_array(np.array(zero_out, dtype), "z_out")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("codes", kind, [256])], outputs,
                              constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, feeds: dict, optimize: bool = True) -> list:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("dtype, site", [(np.uint8, s) for s in UINT8_SITES] + [(np.int8, s) for s in INT8_SITES])
@pytest.mark.parametrize("optimize", [False, True])  # the QDQ nodes as written, and fused into QLinear kernels
def test_every_code_within_one_code_of_the_float32_round_trip(dtype, site, optimize):
    before = chain(*site, dtype=dtype)
    after = onnx.ModelProto.FromString(before.SerializeToString())
    assert int8_hard_swish(after) == 1
    onnx.checker.check_model(after, full_check=True)
    assert "HardSwish" not in {n.op_type for n in after.graph.node}
    codes = {"codes": np.arange(256, dtype=np.uint8).view(dtype)}
    want, got = run(before, codes, optimize=False)[0], run(after, codes, optimize=optimize)[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    moved = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert moved.max() <= 1, (site, np.flatnonzero(moved > 1))
    # rounding r moves few codes at all (fused, QLinearAdd/QLinearMul's own requantization moves a few more:
    # 11% of the codes at (0.1, 60, 0.08, 5))
    assert np.mean(moved == 0) >= 0.8, (site, np.mean(moved == 0))


def test_onnx_runtime_fuses_it_into_qlinear_add_and_mul(tmp_path):
    # conv -> hard-swish -> conv, quantized the way cnncomp does: the rewrite leaves only int8 kernels between
    # the convs and adds no Transpose to ONNX Runtime's NHWC int8 run
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from cnncomp.precision.int8 import FeedReader

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal((32, 32, 1, 1)) / 6).astype(np.float32), f"w{i}")
               for i in range(2)]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w0"], ["c"], name="conv0"),
         helper.make_node("HardSwish", ["c"], ["h"], name="hswish"),
         helper.make_node("Conv", ["h", "w1"], ["y"], name="conv1")], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 16, 16])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "f.onnx"))
    feeds = {"x": rng.uniform(-4, 4, (8, 32, 16, 16)).astype(np.float32)}
    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), FeedReader(feeds),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    quantized = onnx.load(str(tmp_path / "q.onnx"))

    def optimized_ops(model, name):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / name)
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(str(tmp_path / name)).graph.node]

    rewritten = onnx.ModelProto.FromString(quantized.SerializeToString())
    assert int8_hard_swish(rewritten) == 1
    before, after = optimized_ops(quantized, "before.onnx"), optimized_ops(rewritten, "after.onnx")
    assert after.count("QLinearConv") == before.count("QLinearConv") == 2
    assert after.count("QLinearAdd") == 1 and after.count("QLinearMul") == 1
    assert not {"HardSwish", "HardSigmoid", "Mul", "Add"} & set(after), after
    assert after.count("Transpose") <= before.count("Transpose")
    one = {"x": feeds["x"][:1]}
    got, want = run(rewritten, one)[0], run(quantized, one)[0]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.01  # a hard-swish code moved: conv1 moves a step


def test_a_float32_reader_of_the_hard_swish_leaves_it_alone():
    # rewriting it would add QLinearAdd + QLinearMul and still run the float32 hard-swish for the Neg
    model = chain(*UINT8_SITES[0], extra_reader=True)
    assert hard_swish_sites(model) == []
    assert int8_hard_swish(model) == 0


def test_an_output_step_finer_than_the_rounding_of_r_is_refused():
    # input codes reach |x| >= 3, output step 0.004: rounding clip(x + 3, 0, 6) to 6/255 (up to 0.0059 of
    # hard-swish) could move an output by two codes
    from cnncomp.precision.int8_hardswish import refusal

    model = chain(0.05, 128, 0.004, 100)
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dq, op, q = model.graph.node
    assert "under twice what rounding clip(x + 3, 0, 6) moves it" in refusal(dq, op, [q], set(), constants)
    assert int8_hard_swish(model) == 0


# a conv before a hard-swish that an int8 conv reads: in int8 at >= 110 MACs per output element (the int8
# hard-swish pays), float32 below; a hard-swish read by a float32 5x5 depthwise conv keeps the old limit (256):
# before_dw passes the first round (128 MACs, dw not yet float32) and goes to float32 in the next
SPEC = """network hswish
input x: [N, 128, 14, 14]
w = x -> conv(96, 1) as wide -> hardswish -> conv(64, 3, p=1) as next_wide -> relu
n = w -> conv(96, 1) as narrow -> hardswish -> conv(64, 3, p=1) as next_narrow -> relu
d = x -> conv(96, 1) as before_dw -> hardswish -> conv(96, 5, p=2, g=96) as dw -> relu -> conv(64, 1) as dproj
y = n -> add(d)
output y
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("hswish") / "hswish.cnn"
    path.write_text(SPEC)
    return str(path)


def test_placement_keeps_a_conv_int8_before_an_int8_hard_swish(spec):
    model = cnncomp.compile(spec, opt_level=1)
    why = slower_in_int8(model, layer_groups(model), "onnxruntime-cpu")
    assert "wide" not in why, why  # 128 MACs per output element
    assert "narrow" in why and "the int8 hard-swish after it" in why["narrow"], why  # 64
    assert "before_dw" in why and "only float32 nodes read its output (HardSwish)" in why["before_dw"], why


def test_the_compiled_int8_model_runs_its_hard_swish_in_int8(fresh_timing_cache, spec, monkeypatch):
    monkeypatch.setattr(int8_speed, "time_models", lambda *a, **k: (2.0, 1.0, False))  # int8 counts as faster
    monkeypatch.setattr(int8_speed, "quantized_islands", lambda *a, **k: [])  # no timing of this toy's layers
    lines = []
    feeds = {"x": np.random.default_rng(1).uniform(-3, 3, (24, 128, 14, 14)).astype(np.float32)}  # wide enough
    # a range that its hard-swish output step is not refused (see test_an_output_step_finer_...)
    quantized = cnncomp.compile(spec, precision="int8", calibration=feeds, max_error=0.05, metric="rel-l2",
                                log=lines.append)
    said = "".join(lines)
    ops = [n.op_type for n in quantized.graph.node]
    assert "hard-swish in int8 as QLinearAdd + QLinearMul" in said or "hard-swishes in int8" in said, said
    assert ops.count("HardSwish") < 3 and ops.count("Mul") >= 1, ops


def test_unnamed_nodes_are_left_alone():
    # the rewrite finds the nodes it replaces by name: a chain without names is not rewritten (nor broken)
    model = chain(*UINT8_SITES[0])
    for node in model.graph.node:
        node.name = ""
    assert int8_hard_swish(model) == 0
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "HardSwish", "QuantizeLinear"]
