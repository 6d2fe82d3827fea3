"""TensorRT: the compatibility check (no TensorRT needed), the optimization profile, the engine builder's
use of the TensorRT 10 API (through a stand-in module), and `compile --target tensorrt` without TensorRT
or a GPU. A real engine is built only where TensorRT and a GPU are both present."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import cli
from onnx import TensorProto, helper, numpy_helper

import cnncomp.deployment.tensorrt as trt_backend
from cnncomp.deployment.tensorrt import (
    build_engine,
    check_tensorrt_compatible,
    engine_profile,
    profile_shapes,
    tensorrt_missing,
    write_engine,
)
from cnncomp.errors import CnnError

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(p.name for p in (ROOT / "specs").glob("*.cnn"))
SHRINK = {  # -D overrides that keep each network's ops but make its weights small
    "alexnet.cnn": {"num_classes": "10"}, "c3d.cnn": {"width": "8", "num_classes": "10"},
    "densenet121.cnn": {"growth": "8", "init_features": "16", "num_classes": "10"},
    "resnet18.cnn": {"width": "8", "num_classes": "10"}, "resnet50.cnn": {"width": "8"},
    "se_resnet50.cnn": {"width": "16", "num_classes": "10"}, "vgg16.cnn": {"width": "8", "num_classes": "10"},
    "hdc_segnet.cnn": {"width": "16"}, "mobilenet_v2.cnn": {"num_classes": "10"},
    "shufflenet_v2_x1_0.cnn": {"num_classes": "10"}, "googlenet.cnn": {"num_classes": "10"},
}


def emit_with_zero_weights(spec: str):
    """The spec's ONNX model at opset 17 (19 where DeformConv needs it); TensorRT compatibility does
    not depend on weight values, so zeros stand in for the seeded ones."""
    from cnncomp.emit.onnx import emit_onnx
    from cnncomp.ir.weights import expected_weights
    from cnncomp.pipeline import load as load_graph

    graph = load_graph(str(ROOT / "specs" / spec), SHRINK.get(spec))
    weights = {name: np.zeros(w.shape, np.float32) for name, w in expected_weights(graph).items()}
    return emit_onnx(graph, weights)


@pytest.mark.parametrize("spec", SPECS)
def test_bundled_specs_suit_tensorrt(spec):
    model = emit_with_zero_weights(spec)
    assert check_tensorrt_compatible(model) == []


def test_bundled_fp16_model_suits_tensorrt():
    from cnncomp.precision.fp16 import to_fp16

    model, _ = to_fp16(emit_with_zero_weights("hdc_segnet.cnn"), keep_io_fp32=True)
    assert check_tensorrt_compatible(model) == []


def test_deform_conv_needs_tensorrt_10_1():
    model = emit_with_zero_weights("deformable_net.cnn")
    assert model.opset_import[0].version == 19
    problems = check_tensorrt_compatible(model, trt_version=(10, 0))
    assert problems and all("needs TensorRT 10.1 or newer" in p for p in problems)
    assert check_tensorrt_compatible(model, trt_version=(10, 1)) == []


def crafted_bad_model() -> onnx.ModelProto:
    """A model with one of each thing TensorRT's ONNX parser refuses."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", 32])
    d = helper.make_tensor_value_info("d", TensorProto.DOUBLE, ["N", 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("p", "v", "u", "r", "v2")]
    k_big = numpy_helper.from_array(np.array([4000], np.int64), "k_big")
    scales = numpy_helper.from_array(np.array([1, 1, 2], np.float32), "scales")
    w64 = numpy_helper.from_array(np.ones(4, np.float64), "w64")
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3], dilations=[2]),
        helper.make_node("TopK", ["x", "k_big"], ["v", "i"], axis=-1),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "one_start", "one_end"], ["k_dyn"]),
        helper.make_node("TopK", ["x", "k_dyn"], ["v2", "i2"], axis=-1, sorted=0),
        helper.make_node("Unique", ["x"], ["u"]),
        helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="cubic", antialias=1),
        helper.make_node("Add", ["d", "w64"], ["d2"]),
    ]
    inits = [k_big, scales, w64, numpy_helper.from_array(np.array([2], np.int64), "one_start"),
             numpy_helper.from_array(np.array([3], np.int64), "one_end")]
    graph = helper.make_graph(nodes, "bad", [x, d], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("custom", 1)])
    return model


def test_crafted_bad_model_is_flagged():
    problems = check_tensorrt_compatible(crafted_bad_model())
    text = "\n".join(problems)
    for expected in (
        "opset 21 is outside 9..20",
        "operator domain 'custom'",
        "input 'd' is float64",
        "1 float64 weight(s) (w64)",
        "input 'x' has a dynamic channel dim ('C')",
        "MaxPool node 'p' pools over 1 spatial dim(s)",
        "MaxPool node 'p' has dilations [2]",
        "TopK node 'v' has K = 4000; TensorRT needs K < 3840",
        "TopK node 'v2' has sorted=0",
        "TopK node 'v2' takes K from a tensor computed at run time",
        "op Unique (1 node(s)) is not in TensorRT 10's ONNX operator support matrix",
        "Resize node 'r' uses mode 'cubic'",
        "Resize node 'r' antialiases",
    ):
        assert expected in text, f"missing: {expected}\n{text}"
    assert len(problems) == 13


def test_problems_name_the_spec_location():
    from cnncomp.emit.onnx import emit_onnx
    from cnncomp.frontend.cnn.loader import load_text
    from cnncomp.ir.weights import init_weights

    graph = load_text("network n\ninput x: [N, 4, 32]\ny = x -> maxpool(k=2) as pool\noutput y\n", "seq.cnn")
    problems = check_tensorrt_compatible(emit_onnx(graph, init_weights(graph)))
    assert problems == ["MaxPool node 'pool' (seq.cnn:3:10) pools over 1 spatial dim(s); TensorRT pools in 2D "
                        "or 3D only"]


# ---- optimization profiles -----------------------------------------------------------------


def test_profile_shapes():
    model = emit_with_zero_weights("lenet.cnn")
    profile = profile_shapes(model, 1, 4, 16)
    assert profile.shapes == {"x": ((1, 1, 28, 28), (4, 1, 28, 28), (16, 1, 28, 28))}
    assert profile_shapes(model, max_batch=8).shapes["x"][1] == (8, 1, 28, 28)  # opt defaults to max
    with pytest.raises(CnnError, match="1 <= --min-batch <= --opt-batch <= --max-batch"):
        profile_shapes(model, 4, 2, 8)
    bad = crafted_bad_model()
    with pytest.raises(CnnError, match="dynamic dim 'C' at position 1"):
        profile_shapes(bad)


# ---- the engine builder, against a stand-in for the TensorRT 10 Python API ---------------------


class Recorder:
    def __init__(self):
        self.calls = []


def fake_tensorrt(rec: Recorder, parse_ok: bool = True, strongly_typed: bool = True):
    """Just enough of the `tensorrt` module for build_engine, recording what it is asked."""
    trt = types.SimpleNamespace(__version__="10.3.0")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            rec.calls.append(("Logger", level))

    class Input:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return Input("x", (-1, 1, 28, 28))

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            rec.calls.append(("parse", len(data) > 0))
            return parse_ok

        def get_error(self, i):
            return "In node 0 (importConv): UNSUPPORTED_NODE"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            rec.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            rec.calls.append(("workspace", pool, size))

        def set_flag(self, flag):
            rec.calls.append(("flag", flag))

        def add_optimization_profile(self, profile):
            rec.calls.append(("add_profile",))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            rec.calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"PLAN"

    flags = types.SimpleNamespace(STRONGLY_TYPED=1) if strongly_typed else types.SimpleNamespace()
    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, Parser
    trt.NetworkDefinitionCreationFlag = flags
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16")
    return trt


@pytest.fixture
def pretend_gpu(monkeypatch):
    monkeypatch.setattr(trt_backend, "_cuda_devices", lambda: (1, None))


def test_build_engine_uses_the_tensorrt_10_api(monkeypatch, pretend_gpu, tmp_path):
    rec = Recorder()
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: fake_tensorrt(rec))
    model = emit_with_zero_weights("lenet.cnn")
    profile = engine_profile(model, 1, 2, 4)
    size = write_engine(model, profile, tmp_path / "lenet.plan", fp16=False)
    assert size == 4 and (tmp_path / "lenet.plan").read_bytes() == b"PLAN"
    assert ("create_network", 0) in rec.calls and ("parse", True) in rec.calls
    assert ("workspace", "WORKSPACE", 1 << 30) in rec.calls
    assert ("set_shape", "x", (1, 1, 28, 28), (2, 1, 28, 28), (4, 1, 28, 28)) in rec.calls
    assert ("add_profile",) in rec.calls and not any(c[0] == "flag" for c in rec.calls)


def test_build_engine_fp16(monkeypatch, pretend_gpu):
    model = emit_with_zero_weights("lenet.cnn")
    profile = profile_shapes(model)
    rec = Recorder()
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: fake_tensorrt(rec))
    build_engine(model, profile, fp16=True)
    assert ("create_network", 1 << 1) in rec.calls  # strongly typed: the float16 model's types rule
    rec = Recorder()
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: fake_tensorrt(rec, strongly_typed=False))
    build_engine(model, profile, fp16=True)
    assert ("flag", "FP16") in rec.calls and ("create_network", 0) in rec.calls


def test_parser_errors_are_reported(monkeypatch, pretend_gpu):
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: fake_tensorrt(Recorder(), parse_ok=False))
    model = emit_with_zero_weights("lenet.cnn")
    with pytest.raises(CnnError, match="refused the model:\n  In node 0 \\(importConv\\)"):
        build_engine(model, profile_shapes(model))


# ---- the command line ------------------------------------------------------------------------


@pytest.mark.skipif(not tensorrt_missing(), reason="TensorRT and a GPU are present here")
def test_compile_tensorrt_says_what_is_missing(tmp_path, capsys):
    plan = tmp_path / "lenet.plan"
    code, _, err = cli(capsys, "compile", ROOT / "specs" / "lenet.cnn", "--target", "tensorrt", "-o", plan,
                       "--max-batch", 16, "--precision", "fp16")
    assert code == 1
    assert "cannot build a TensorRT engine here:" in err
    for missing in tensorrt_missing():
        assert missing in err
    assert not plan.exists() and list(tmp_path.iterdir()) == []


def test_compile_tensorrt_refuses_an_incompatible_model(tmp_path, capsys):
    plan = tmp_path / "seq.plan"
    spec = tmp_path / "seq.cnn"
    spec.write_text("network n\ninput x: [N, 4, 32]\ny = x -> maxpool(k=2) as pool\noutput y\n")
    code, _, err = cli(capsys, "compile", spec, "--target", "tensorrt", "-o", plan)
    assert code == 1
    assert "TensorRT's ONNX parser would refuse this model" in err and "seq.cnn:3:10" in err
    assert not plan.exists()


def test_compile_tensorrt_bad_batch_sizes(tmp_path, capsys):
    code, _, err = cli(capsys, "compile", ROOT / "specs" / "lenet.cnn", "--target", "tensorrt", "-o",
                       tmp_path / "x.plan", "--min-batch", 8, "--max-batch", 4)
    assert code == 1 and "--min-batch <= --opt-batch <= --max-batch" in err


def test_compile_tensorrt_with_emit_cnn_is_bad_usage(tmp_path, capsys):
    code, _, err = cli(capsys, "compile", ROOT / "specs" / "lenet.cnn", "--target", "tensorrt", "--emit", "cnn",
                       "-o", tmp_path / "x.plan")
    assert code == 2 and "cannot go with --emit cnn" in err


@pytest.mark.skipif(bool(tensorrt_missing()), reason="needs the tensorrt package and an NVIDIA GPU: "
                    + "; ".join(tensorrt_missing()))
def test_real_engine_builds_and_runs(tmp_path, capsys):  # pragma: no cover - GPU machines only
    import tensorrt as trt

    plan = tmp_path / "lenet.plan"
    code, out, err = cli(capsys, "compile", ROOT / "specs" / "lenet.cnn", "--target", "tensorrt", "-o", plan,
                         "--min-batch", 1, "--opt-batch", 4, "--max-batch", 8)
    assert code == 0, err
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None and engine.num_optimization_profiles == 1
    name = engine.get_tensor_name(0)
    assert tuple(engine.get_tensor_profile_shape(name, 0)[2]) == (8, 1, 28, 28)


# ---- optimization profiles of models with symbolic sizes (--shape-range) -------------------------


DYNAMIC = "network seg\ninput x: [N, 3, H, W] where H % 8 == 0, W % 8 == 0\ny = x -> conv(4, k=3, s=2, p=1)\noutput y\n"


def test_profile_shapes_of_symbolic_sizes_come_from_the_shape_range(tmp_path):
    import cnncomp
    from cnncomp.emit.onnx import emit_onnx
    from cnncomp.ir.weights import init_weights

    spec = tmp_path / "seg.cnn"
    spec.write_text(DYNAMIC)
    graph = cnncomp.load(spec)
    model = emit_onnx(graph, init_weights(graph))
    with pytest.raises(CnnError, match=r"dynamic dim 'H' at position 2; give the engine's range of shapes with "
                                       r"--shape-range x=MIN:OPT:MAX \(e.g. x=1x3x512x512:"):
        profile_shapes(model)
    ranges = {"x": ((1, 3, 64, 64), (2, 3, 256, 320), (4, 3, 512, 512))}
    assert profile_shapes(model, ranges=ranges).shapes == ranges
    assert profile_shapes(model, ranges={None: ranges["x"]}).shapes == ranges  # the one input, unnamed
    with pytest.raises(CnnError, match="needs MIN <= OPT <= MAX in every dim"):
        profile_shapes(model, ranges={"x": ((1, 3, 64, 64), (1, 3, 32, 64), (1, 3, 512, 512))})
    with pytest.raises(CnnError, match="dim 1 of 1x4x64x64 must be 3"):
        profile_shapes(model, ranges={"x": ((1, 4, 64, 64),) * 3})
    with pytest.raises(CnnError, match="the model has no input 'y'"):
        profile_shapes(model, ranges={"y": ranges["x"]})


def test_engine_of_a_dynamic_model_gets_the_range_profile(monkeypatch, pretend_gpu, tmp_path, capsys):
    rec = Recorder()
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: fake_tensorrt(rec))
    spec = tmp_path / "seg.cnn"
    spec.write_text(DYNAMIC)
    code, out, err = cli(capsys, "compile", spec, "--target", "tensorrt", "-o", tmp_path / "seg.plan",
                         "--shape-range", "x=1x3x64x64:1x3x256x256:2x3x512x768")
    assert code == 0, err
    assert ("set_shape", "x", (1, 3, 64, 64), (1, 3, 256, 256), (2, 3, 512, 768)) in rec.calls
    code, _, err = cli(capsys, "compile", spec, "--target", "tensorrt", "-o", tmp_path / "bad.plan",
                       "--shape-range", "x=1x3x64x64:1x3x256x256")
    assert code == 2 and "--shape-range takes NAME=MIN:OPT:MAX" in err
