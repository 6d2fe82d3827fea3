"""Per-runtime int8 placement (precision/int8_placement.py): a runtime's rule names the layers its int8 runs
slower than its float, int8 keeps them in float32 for that runtime only. OpenVINO's rule, on AMX CPUs, keeps the
conv that reads the network's few-channel input (the RGB stem) in float, and OpenVINO computes an int8 model's
float layers in bf16 there. The rule is a graph rule (no OpenVINO needed); the CPU is stood in for."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnncomp.onnx_graph import producers
from cnncomp.pipeline import emit_model, optimize
from cnncomp.precision.convert import runtime_float_layers
from cnncomp.precision.int8 import quantize_int8
from cnncomp.precision.int8_placement import input_convs
from cnncomp.run.runtime import runtimes
from cnncomp.run.session import Session

NET = ("network small\ninput x: [N, 3, 16, 16]\n"
       "y = x -> conv(16, k=3, p=1) as c1 -> relu -> conv(16, k=3, p=1) as c2 -> relu\n"
       "   -> conv(32, k=3, s=2, p=1) as c3 -> relu -> gap as pool -> flatten as flat -> linear(10) as fc\n"
       "output y\n")


def conv_model(channels: int, group: int = 1, through_relu: bool = False) -> onnx.ModelProto:
    """x [1, channels, 8, 8] [-> Relu] -> Conv(8 filters, `group` groups) -> y."""
    w = numpy_helper.from_array(np.ones((8, channels // group, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu")] if through_relu else []
    nodes.append(helper.make_node("Conv", ["r" if through_relu else "x", "w"], ["y"], name="conv", group=group))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("channels,group,through_relu,found", [
    (3, 1, False, True),   # an RGB stem
    (1, 1, False, True),   # a grayscale one
    (4, 1, False, True),
    (8, 1, False, False),  # wide enough to fill int8 tiles better: int8
    (8, 8, False, False),  # a depthwise conv on an 8-channel input reads 8 channels, not 1
    (3, 1, True, False),   # not reading the graph input itself
])
def test_input_convs_finds_the_convs_reading_a_few_channel_network_input(channels, group, through_relu, found):
    got = input_convs(conv_model(channels, group, through_relu))
    assert (got == {"conv": f"reads the network input 'x' with {channels} channel{'s' if channels > 1 else ''}"}
            if found else got == {})


@pytest.fixture
def amx(monkeypatch):
    """The CPU has AMX, whatever this one has."""
    import cnncomp.run.openvino

    monkeypatch.setattr(cnncomp.run.openvino, "amx_cpu", lambda cpuinfo=None: True)


def test_without_amx_openvino_places_int8_as_onnx_runtime_does(monkeypatch):
    import cnncomp.run.openvino

    monkeypatch.setattr(cnncomp.run.openvino, "amx_cpu", lambda cpuinfo=None: False)
    assert runtimes()["openvino"].int8_float_rule is None
    assert runtime_float_layers("openvino", conv_model(3)) == {}


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    from cnncomp.run.openvino import amx_cpu

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    assert amx_cpu(cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu avx512f avx512_vnni avx512_bf16\n")  # AVX-512 BF16, no AMX (Zen 4)
    assert not amx_cpu(cpuinfo)
    assert not amx_cpu(tmp_path / "missing")


def test_only_openvino_has_the_rule(amx):
    model = conv_model(3)
    assert runtimes()["openvino"].int8_float_rule == "input-convs"
    assert runtime_float_layers("openvino", model) == {"conv": "openvino: reads the network input 'x' with 3 channels"}
    for runtime in ("cpu", "tensorrt", None, "auto"):
        assert runtime_float_layers(runtime, model) == {}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    spec = tmp_path_factory.mktemp("placement") / "small.cnn"
    spec.write_text(NET)
    compiled = optimize(str(spec))
    return compiled, emit_model(compiled), {"x": np.random.default_rng(1).standard_normal((16, 3, 16, 16))
                                            .astype(np.float32)}


def quantized_convs(model: onnx.ModelProto) -> dict[str, bool]:
    """{conv: whether its data input comes through a DequantizeLinear (int8)}."""
    made_by = producers(model)
    return {n.name: made_by.get(n.input[0]) is not None and made_by[n.input[0]].op_type == "DequantizeLinear"
            for n in model.graph.node if n.op_type == "Conv"}


def test_the_rule_keeps_the_stem_float_and_the_rest_int8(small, amx):
    compiled, model, calibration = small
    args = (model, compiled.graph, compiled.ref_graph, compiled.ref_weights, calibration)
    plain, plain_report = quantize_int8(*args, timed=False, keep_slower=True)
    assert quantized_convs(plain) == {"c1": True, "c2": True, "c3": True}
    kept = runtime_float_layers("openvino", model)
    assert list(kept) == ["c1"]
    placed, report = quantize_int8(*args, timed=False, keep_slower=True, runtime_float=kept)
    assert quantized_convs(placed) == {"c1": False, "c2": True, "c3": True}
    weight = next(n for n in placed.graph.node if n.name == "c1").input[1]
    assert weight in {t.name for t in placed.graph.initializer}  # float weights, no DequantizeLinear
    assert report.runtime_float == {"c1": "openvino: reads the network input 'x' with 3 channels"}
    assert report.no_int8_kernel == {}  # not for want of an ONNX Runtime kernel
    assert any("c1 (openvino: reads the network input 'x' with 3 channels)" in n for n in report.notes)
    assert all(layer.layer != "c1" for layer in report.layers)  # never an int8 candidate of the search
    x = {"x": calibration["x"][:2]}
    expected = Session(model, "cpu").run(x)["y"]
    got = Session(placed, "cpu").run(x)["y"]
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.05


def test_compile_for_openvino_applies_its_rule_and_for_cpu_not(amx):
    import cnncomp

    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    for runtime, stem_int8 in (("cpu", True), ("openvino", False)):
        model = cnncomp.compile("specs/lenet.cnn", precision="int8", runtime=runtime, calibration={"x": x},
                                keep_slower_int8=True)
        convs = quantized_convs(model)
        first = next(iter(convs))
        assert convs[first] is stem_int8, runtime
        assert all(list(convs.values())[1:])  # every other conv int8 either way


@pytest.mark.skipif(__import__("cnncomp.run.openvino").run.openvino.openvino_problem() is not None,
                    reason="OpenVINO not installed (pip install 'cnncomp[openvino]')")
@pytest.mark.parametrize("has_amx", [True, False])
def test_openvino_computes_an_int8_models_float_layers_in_bf16_on_amx(monkeypatch, has_amx):
    import cnncomp
    import cnncomp.run.openvino
    from cnncomp.run.openvino import OpenVinoSession, precision_problem

    monkeypatch.setattr(cnncomp.run.openvino, "amx_cpu", lambda cpuinfo=None: has_amx)
    model = cnncomp.compile("specs/lenet.cnn")
    session = OpenVinoSession(model, "int8")
    expected = "bf16" if has_amx and precision_problem("bf16") is None else "f32"
    assert session.inference_precision == expected
    assert OpenVinoSession(model, "fp32").inference_precision == "f32"  # fp32 stays f32 on any CPU


@pytest.mark.skipif(__import__("cnncomp.run.openvino").run.openvino.openvino_problem() is not None,
                    reason="OpenVINO not installed (pip install 'cnncomp[openvino]')")
def test_bench_converts_int8_once_per_placement(capsys, monkeypatch, amx):
    """cpu and openvino share fp32's model but not int8's: each runtime's int8 row times the file placed for it."""
    import json

    import cnncomp.pipeline
    from cli_helpers import cli

    seen = []
    convert = cnncomp.pipeline.convert_precision

    def recording(model, graph, precision, request, log):
        seen.append((precision, request.runtime))
        return convert(model, graph, precision, request, log)

    monkeypatch.setattr(cnncomp.pipeline, "convert_precision", recording)
    code, out, err = cli(capsys, "bench", "specs/lenet.cnn", "--runtimes", "cpu,openvino", "--precisions", "fp32,int8",
                         "--rounds", "1", "--runs", "1", "--threads", "1", "--json")
    assert code == 0, err
    assert sorted(seen) == [("fp32", "cpu"), ("int8", "cpu"), ("int8", "openvino")]
    rows = {(r["runtime"], r["precision"]): r for r in json.loads(out)["rows"]}
    assert rows["openvino", "int8"]["error"] < 0.05
