"""`cnncomp import` round trips every bundled spec: compile -> import -> compile gives the same outputs.

Each spec is compiled at -O0 (every layer lowered as written, seeded weights),
imported back, and the imported spec compiled with the imported weights; both
models run under ONNX Runtime on the same seeded input and must agree
exactly (the same float32 kernels on the same weights), with the same
parameter count, the same layers (names, ops, attributes, wiring) and the
same weights. Specs with a width constant are shrunk with -D to keep the
test fast. alexnet and vgg16 keep dense layers of 4096 that no constant
shrinks (61M and 30M parameters), deeplabv3_resnet50 its 42M-parameter
backbone: for them the import runs on the model in memory and the second
compile and the runs are left out; the same layers with the same weights
compile to the same model. alexnet and deeplabv3_resnet50 run only with
CNNCOMP_SLOW_TESTS=1 (they pass: the import itself takes a second).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from onnx import numpy_helper

import cnncomp
from cnncomp.pipeline import import_model
from cnncomp.ir.cost import graph_cost

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.cnn"))
# Smaller widths for speed.
DEFINES = {
    "alexnet": {"num_classes": "10"},
    "c3d": {"width": "8", "size": "64", "num_classes": "10"},
    "vgg16": {"width": "8", "num_classes": "10"},
    "resnet50": {"width": "16"},
    "se_resnet50": {"width": "16", "num_classes": "10"},
    "resnet18": {"width": "16", "num_classes": "10"},
    "densenet121": {"growth": "8", "init_features": "16", "num_classes": "10"},
    "hdc_segnet": {"width": "16", "H": "64", "W": "64"},  # the dynamic specs pinned to a size (-D H=...)
    "unet": {"width": "8", "H": "64", "W": "64"},
    "espcn": {"H": "32", "W": "32"},
    "deeplabv3_resnet50": {"H": "64", "W": "64", "num_classes": "3"},
    "shufflenet_v2_x1_0": {"c2": "24", "c3": "48", "c4": "96", "c5": "128", "num_classes": "10"},
}
# Readable output: these import with blocks (and runs of them as repeat), as their specs are written.
STRUCTURE_ONLY = {"alexnet", "vgg16", "deeplabv3_resnet50"}
# Over 40M parameters that no constant shrinks: ~10 s of CPU each just to compile. Their layers
# (conv, dilated conv, linear, pools, upsample) are covered by vgg16, resnet50 and hdc_segnet.
SLOW = {"alexnet": "61M parameters", "deeplabv3_resnet50": "42M parameters"}
WITH_REPEAT = {"resnet18", "resnet50", "se_resnet50", "densenet121", "shufflenet_v2_x1_0", "squeezenet1_0"}


def structure(graph):
    """Every layer with its op, attributes, shape and inputs, by name (the order of independent layers may differ)."""
    def op(layer):
        if layer.op == "dropout":  # the identity at inference, lowered to an ONNX Identity
            return "identity", {}
        if layer.op in ("maxpool", "avgpool"):  # ceil mode is unobservable where it adds no window
            rank = len(layer.attrs["kernel"])
            return layer.op, {k: v for k, v in layer.attrs.items() if k not in ("ceil", "pads")}, \
                layer.attrs["pads"][:rank]
        return layer.op, layer.attrs

    return {l.name: (op(l), l.shape, graph.input_names(l.name)) for l in graph.layers()}


def run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def seeded_feeds(model):
    rng = np.random.default_rng(0)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value if d.HasField("dim_value") else 2 for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.uniform(-1, 1, shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", SPECS)
def test_bundled_spec_round_trips(name, tmp_path):
    if name in SLOW and not os.environ.get("CNNCOMP_SLOW_TESTS"):
        pytest.skip(f"{name}: {SLOW[name]}, ~10 s of CPU to compile; set CNNCOMP_SLOW_TESTS=1 to run it")
    spec = ROOT / "specs" / f"{name}.cnn"
    defines = DEFINES.get(name)
    if name in STRUCTURE_ONLY:  # in memory: their files would take most of the time
        original = cnncomp.compile(spec, opt_level=0, defines=defines)
        result = import_model(original, name)
        imported = result.graph
    else:
        original = cnncomp.compile(spec, output=tmp_path / "original.onnx", opt_level=0, defines=defines)
        result = cnncomp.import_onnx(tmp_path / "original.onnx", tmp_path / f"{name}.cnn")
        assert (tmp_path / f"{name}.safetensors").is_file()
        imported = cnncomp.load(tmp_path / f"{name}.cnn")
    graph = cnncomp.load(spec, defines)
    assert graph_cost(imported)[0] == graph_cost(graph)[0]
    assert structure(imported) == structure(graph)
    initializers = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    assert set(result.weights) == {n for n in initializers if "/" not in n}  # helper constants have a '/'

    for key, value in result.weights.items():
        np.testing.assert_array_equal(value, initializers[key])
    if name in WITH_REPEAT:
        assert "repeat" in result.text and "block " in result.text, result.text
    if name in STRUCTURE_ONLY:
        return

    again = cnncomp.compile(tmp_path / f"{name}.cnn", opt_level=0, weights=tmp_path / f"{name}.safetensors")
    feeds = seeded_feeds(original)
    for want, got in zip(run(original, feeds), run(again, feeds)):
        assert want.shape == got.shape
        np.testing.assert_array_equal(got, want)


def test_resnet50_import_reads_like_the_spec(tmp_path):
    """Bottleneck blocks in repeats, as specs/resnet50.cnn writes them; not a 175-line list."""
    cnncomp.compile(ROOT / "specs" / "resnet50.cnn", output=tmp_path / "r.onnx", opt_level=0,
                    defines={"width": "8"})
    text = import_model(tmp_path / "r.onnx").text
    assert len(text.splitlines()) < 60, text
    assert 'repeat 5 as i { ' in text and 'as "layer3.{i + 1}" }' in text


OWN_PATTERNS = """
network patterns
input x: [N, 4, 12, 12]
input t: [N, 6, 20]
a = x -> conv(8, k=3, p=(1, 0, 1, 2), bias=false) -> gn(2) -> prelu -> minpool(k=2, s=1)
      -> conv(8, k=1) -> silu -> gelu -> elu(alpha=0.5) -> hardswish -> hardsigmoid -> leaky_relu(a=0.1)
b = a -> avgpool(k=3, s=2, p=1, ceil=true, count_pad=true) -> upsample(scale=2, mode="linear")
      -> pad(p=(1, 0, 0, 2), value=0.5) -> lppool(k=2, norm=3) -> slice(2, 6) -> shuffle(2)
      -> maxpool(k=3, s=2, p=1, ceil=true) -> prelu(shared=true) -> tanh
c = t -> kmaxpool(3) -> linear(5) -> rrelu -> linear(4, bias=false) -> softmax(axis=2)
d = concat(b, b * b, axis=1) -> gap -> flatten -> linear(3) -> log_softmax
output d, c
"""


def test_every_lowering_pattern_of_cnncomp_round_trips(tmp_path):
    """The multi-node lowerings (gn, minpool, silu, gelu, shuffle, kmaxpool, MatMul linear...) come back as their layers."""
    (tmp_path / "p.cnn").write_text(OWN_PATTERNS)
    original = cnncomp.compile(tmp_path / "p.cnn", output=tmp_path / "p.onnx", opt_level=0)
    result = cnncomp.import_onnx(tmp_path / "p.onnx", tmp_path / "back.cnn")
    graph = cnncomp.load(tmp_path / "p.cnn")
    ops = {l.op for l in graph.layers()} - {"input", "rrelu", "avgpool"}  # rrelu lowers as leaky_relu
    assert ops <= {l.op for l in result.graph.layers()}, result.text
    assert {l.name for l in result.graph.layers()} == {l.name for l in graph.layers()}
    again = cnncomp.compile(tmp_path / "back.cnn", opt_level=0, weights=tmp_path / "back.safetensors")
    feeds = seeded_feeds(original)
    for want, got in zip(run(original, feeds), run(again, feeds)):
        np.testing.assert_array_equal(got, want)
