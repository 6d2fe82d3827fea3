"""int8 placement (precision/int8_support.py PLACEMENT_RULES): under ONNX Runtime's CPU provider the layers it
runs faster in float32 get no Q/DQ nodes, one rule each, and the rest keeps its QDQ; other runtimes, and
--keep-slower-int8, keep every layer with an int8 kernel in int8; the placed model still verifies."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import cnncomp
from cnncomp.precision import int8_speed
from cnncomp.precision.int8 import Quantizer, layer_groups
from cnncomp.precision.int8_support import RUNTIMES, slower_in_int8

# a MobileNetV3 block (hard-swish, a 5x5 depthwise conv, squeeze-excite with a hard-sigmoid gate) between dense
# convs: every rule has a layer to take, and the dense convs, the project conv and the residual add keep int8
SPEC = """network mbv3
input x: [N, 32, 28, 28]
a = x -> conv(64, 3, p=1) as stem -> relu
e = a -> conv(96, 1) as expand -> hardswish
d = e -> conv(96, 5, p=2, g=96) as dw -> hardswish
g = d -> gap as squeeze -> conv(24, 1) as fc1 -> relu -> conv(96, 1) as fc2 -> hardsigmoid as gate
h = d -> add(d) as doubled
s = h -> mul(g) as excite
y = s -> conv(64, 1) as project -> add(a) as residual -> conv(64, 3, p=1) as head -> relu
output y
"""
# the rule that keeps each layer in float32, by a phrase of its reason
KEPT_FLOAT = {
    "expand": "only float32 nodes read its output (HardSwish)",  # 64 MACs per element, then a hard-swish
    "dw": "depthwise conv with a 25-element window",
    "fc1": "MACs: too few for int8",
    "fc2": "MACs: too few for int8",
    "squeeze": "GlobalAveragePool of a float32 input",
    "excite": "Mul of a float32 input",
    "doubled": "no conv/gemm and only float32 nodes around it",
}
KEPT_INT8 = ("stem", "project", "residual", "head")


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("placement") / "mbv3.cnn"
    path.write_text(SPEC)
    return str(path)


@pytest.fixture(scope="module")
def model(spec) -> onnx.ModelProto:
    return cnncomp.compile(spec, opt_level=1)


def calibration(count: int, seed: int = 0) -> dict:
    return {"x": np.random.default_rng(seed).uniform(-1, 1, (count, 32, 28, 28)).astype(np.float32)}


def qdq_layers(quantized: onnx.ModelProto) -> set[str]:
    """The quantized nodes of a QDQ model: every input dequantized, the output rounded by a QuantizeLinear
    (ONNX Runtime fuses that into its int8 kernel). At the edges of an int8 run a float32 node may read a
    dequantized tensor, or its output be rounded for the int8 node after it, not both."""
    rounded = {n.input[0] for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
    dequantized = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in quantized.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and all(i in dequantized for i in n.input if i) and any(o in rounded for o in n.output)}


def test_each_rule_keeps_its_layer_float32_and_says_why(model):
    why = slower_in_int8(model, layer_groups(model), "onnxruntime-cpu")
    assert set(why) == set(KEPT_FLOAT), why
    for layer, phrase in KEPT_FLOAT.items():
        assert phrase in why[layer], (layer, why[layer])


def test_the_quantized_model_has_no_qdq_around_the_float32_layers(model):
    quantizer = Quantizer(model, calibration(4), "minmax")
    try:
        quantized = quantizer.quantize()
    finally:
        quantizer.close()
    quantized_nodes = qdq_layers(quantized)
    assert not quantized_nodes & set(KEPT_FLOAT), quantized_nodes & set(KEPT_FLOAT)
    assert set(KEPT_INT8) <= quantized_nodes, set(KEPT_INT8) - quantized_nodes
    # the 5x5 depthwise conv keeps its float32 weight: no int8 weight is dequantized into it
    dw = next(n for n in quantized.graph.node if n.name == "dw")
    assert any(t.name == dw.input[1] and t.data_type == onnx.TensorProto.FLOAT for t in quantized.graph.initializer)


@pytest.mark.parametrize("runtime", [r for r in RUNTIMES if r != "onnxruntime-cpu"] + [None])
def test_other_runtimes_and_keep_slower_quantize_every_layer(model, runtime):
    assert slower_in_int8(model, layer_groups(model), runtime) == {}
    quantizer = Quantizer(model, calibration(4), "minmax", runtime=runtime)
    try:
        quantized_nodes = qdq_layers(quantizer.quantize())
    finally:
        quantizer.close()
    assert {"dw", "expand", "fc1", "excite", "stem", "head"} <= quantized_nodes


def test_unknown_runtime_is_refused(model):
    with pytest.raises(ValueError, match="unknown int8 runtime 'gpu'"):
        slower_in_int8(model, layer_groups(model), "gpu")


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_networks_that_gain_from_int8_keep_every_layer(name):
    # their int8 is 1.8x / 3x float32 (docs/precision.md): no rule may take a layer from them
    from pathlib import Path

    spec = Path(__file__).resolve().parents[1] / "specs" / f"{name}.cnn"
    model = cnncomp.compile(str(spec), opt_level=1)
    assert slower_in_int8(model, layer_groups(model)) == {}


def test_the_placed_model_verifies_and_reports_its_float32_layers(fresh_timing_cache, spec, monkeypatch):
    monkeypatch.setattr(int8_speed, "time_models", lambda *a, **k: (2.0, 1.0, False))  # int8 counts as faster
    # the islands rule would time this toy's layers for real: keep its choice out of what this test pins
    monkeypatch.setattr(int8_speed, "quantized_islands", lambda *a, **k: [])
    lines = []
    quantized = cnncomp.compile(spec, precision="int8", calibration=calibration(24, seed=1), verify=True,
                                max_error=0.05, metric="rel-l2", log=lines.append)
    said = "".join(lines)
    assert "7 layers kept in float32, faster there than in int8 under onnxruntime-cpu" in said, said
    assert not qdq_layers(quantized) & set(KEPT_FLOAT)
    # and it computes what the float32 model does, within int8's error
    import onnxruntime as ort

    feeds = calibration(4, seed=2)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    reference, got = run(cnncomp.compile(spec, opt_level=1)), run(quantized)
    assert np.linalg.norm(got - reference) / np.linalg.norm(reference) < 0.05


def test_the_stats_table_lists_the_float32_layers_with_their_reason():
    from cnncomp.precision.int8_report import Int8Report, LayerSensitivity

    report = Int8Report("minmax", "seeded", 8, 4, layers=[LayerSensitivity("stem", "", 0.01, 0.6)],
                        slower_in_int8={"dw": "a depthwise conv with a 25-element window: slower"})
    table = report.table()
    assert "dw" in table and "float32  " in table and "faster in float32: a depthwise conv" in table
    assert "1 of 2 layers in int8" in table


def test_a_network_whose_every_layer_is_kept_float32_is_written_as_float32(fresh_timing_cache, tmp_path, monkeypatch):
    # a hard-swish after each 1x1 conv over 16 channels: every conv is dequantized at once, nothing is left in int8
    spec = tmp_path / "hs.cnn"
    spec.write_text("network hs\ninput x: [N, 16, 32, 32]\n"
                    "y = x -> conv(16, 1) as c1 -> hardswish -> conv(16, 1) as c2 -> hardswish\noutput y\n")
    lines = []
    model = cnncomp.compile(str(spec), precision="int8", log=lines.append, max_error=0.05, metric="rel-l2")
    said = "".join(lines)
    assert "no layer is left in int8" in said, said
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def test_the_why_line_counts_the_placed_layers_as_float32():
    from cnncomp.precision.int8_report import Int8Report, LayerSensitivity

    report = Int8Report("minmax", "seeded", 8, 4, layers=[LayerSensitivity("stem", "", 0.01, 0.6)],
                        slower_in_int8={"expand": "only float32 nodes read its output"},
                        group_macs={"stem": 0.6, "expand": 0.4})
    assert report.int8_macs_share == pytest.approx(0.6)
    assert report.float32_reasons()["placement"] == ["expand"]
    assert "ONNX Runtime runs 1 layer faster in float32 (placement rules; --stats says why) (40.0% of the MACs: " \
        "expand 40.0%)" in report.shortfall()


def test_when_the_search_runs_it_starts_from_every_layer_in_int8(fresh_timing_cache, spec, monkeypatch):
    # full int8 misses this budget, so the fallback search runs; it times and judges each layer itself, so the
    # placement rules' layers are ranked by it (and may stay int8) instead of kept float32 beforehand
    from cnncomp.precision import int8

    monkeypatch.setattr(int8_speed, "time_models", lambda *a, **k: (2.0, 1.0, False))
    reports, quantize_int8 = [], int8.quantize_int8

    def recording(*args, **kwargs):
        quantized, report = quantize_int8(*args, **kwargs)
        reports.append(report)
        return quantized, report

    monkeypatch.setattr(int8, "quantize_int8", recording)
    lines = []
    for max_error, searched in ((1e-4, True), (0.05, False)):
        cnncomp.compile(spec, precision="int8", calibration=calibration(24, seed=1), max_error=max_error,
                        metric="rel-l2", log=lines.append)
        report = reports[-1]
        assert (report.full_int8_budget_error > 1) == searched
        if searched:
            assert report.slower_in_int8 == {}
            assert {"dw", "expand", "fc1"} <= {entry.layer for entry in report.layers}
        else:
            assert set(report.slower_in_int8) == set(KEPT_FLOAT)


def test_bench_times_the_int8_model_each_runtime_would_be_given(fresh_timing_cache, spec, capsys, monkeypatch):
    # ONNX Runtime's int8 row is the placed model compile writes; OpenVINO's (its table is empty) every layer
    # in int8; the placement decides whether the runtimes share one conversion
    import cnncomp.run.runtime as runtime
    from cli_helpers import cli

    monkeypatch.setattr(int8_speed, "time_models", lambda *a, **k: (2.0, 1.0, False))
    monkeypatch.setattr(int8_speed, "quantized_islands", lambda *a, **k: [])  # no real timing of the toy's layers
    opened, models = runtime.open_session, {}

    def recording(model, runtime_name="cpu", *args, precision="fp32", **kwargs):
        models[(runtime_name, precision)] = model
        return opened(model, runtime_name, *args, precision=precision, **kwargs)

    monkeypatch.setattr(runtime, "open_session", recording)
    with_openvino = runtime.runtimes()["openvino"].available()
    code, out, err = cli(capsys, "bench", spec, "--runtimes", "cpu,openvino" if with_openvino else "cpu",
                         "--precisions", "fp32,int8", "--rounds", "1", "--runs", "1", "--json",
                         "--max-error", "0.5", "--metric", "rel-l2")  # the placed model fits: no search
    assert code == 0, err
    placed = qdq_layers(models[("cpu", "int8")])
    assert not placed & set(KEPT_FLOAT) and set(KEPT_INT8) <= placed, placed
    if with_openvino:
        assert {"dw", "expand", "fc1"} <= qdq_layers(models[("openvino", "int8")])


def test_the_rules_see_shapes_behind_a_reshape():
    """Shape inference for the rules keeps small constants (Reshape's target shape) as values: with every
    initializer turned into a graph input, the conv after the Reshape had no shape and no MACs, so the rules
    skipped it (ddddocr's YOLOX: 0 of 5 groups seen)."""
    from onnx import TensorProto, helper, numpy_helper

    from cnncomp.precision.int8_support import GraphFacts, quantizable_ops

    weight = numpy_helper.from_array(np.ones((8, 8, 3, 3), np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 8, 16, 16], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["square"], name="reshape"),
         helper.make_node("Conv", ["square", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8 * 16 * 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    facts = GraphFacts(model, {"conv": ["conv"]}, frozenset(quantizable_ops()))
    assert facts.macs(facts.nodes["conv"]) == 8 * 8 * 9 * 16 * 16
