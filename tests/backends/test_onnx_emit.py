"""ONNX emission: names, locations, metadata, opsets, determinism and saving."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cnncomp.emit.onnx import check_onnx, emit_onnx, ir_version_for, save_onnx
from cnncomp.ir.weights import init_weights
from cnncomp.frontend.cnn.loader import load_text
from cnncomp.errors import CnnError

SPEC = """network emitted
input x: [N, 3, 12, 12]
features = x -> conv(8, k=3, p=1, bias=false) -> bn -> relu6
              -> maxpool(k=2, ceil=true) -> gn(2) -> prelu
skip = features -> conv(8, k=1)
merged = features + skip
logits = merged -> gap -> flatten -> linear(5) -> relu6
output logits, merged
"""

DEFORM = """network deformed
input x: [N, 4, 8, 8]
off = x -> conv(18, k=3, p=1)
y = x -> deform_conv(off, 4, k=3, p=1)
output y
"""


def _emit(text: str, seed: int = 0, **kw):
    graph = load_text(text, "emit.cnn")
    return graph, emit_onnx(graph, init_weights(graph, seed), **kw)


def test_emission_is_byte_identical():
    _, first = _emit(SPEC)
    _, second = _emit(SPEC)
    assert first.SerializeToString() == second.SerializeToString()
    _, other_seed = _emit(SPEC, seed=1)
    assert other_seed.SerializeToString() != first.SerializeToString()


def test_nodes_named_after_layers_with_spec_locations(helpers):
    graph, model = _emit(SPEC)
    helpers.assert_valid_onnx(model)
    nodes = {n.name: n for n in model.graph.node}
    assert len(nodes) == len(model.graph.node), "node names are unique"
    for layer in graph.layers():
        if layer.op == "input":
            continue
        node = nodes[layer.name]
        assert layer.name in node.output
        assert node.doc_string == layer.where
    assert nodes["features.0"].doc_string == "emit.cnn:3:17"
    assert all(re.fullmatch(r"emit\.cnn:\d+:\d+", n.doc_string) for n in model.graph.node)


def test_inputs_outputs_and_weights():
    _, model = _emit(SPEC)
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "x" and dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 12, 12]
    assert [o.name for o in model.graph.output] == ["logits", "merged"]
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    assert out_dims[0].dim_param == "N" and out_dims[1].dim_value == 5
    names = {t.name for t in model.graph.initializer}
    assert {"features.0.weight", "features.1.running_var", "logits.2.weight", "logits.2.bias"} <= names
    used = {i for n in model.graph.node for i in n.input}
    assert names <= used, "no unused initializers"
    consts = [(t.data_type, tuple(t.dims), t.raw_data) for t in model.graph.initializer if "/" in t.name
              or t.name.startswith("const")]
    assert len(consts) == len(set(consts)), "constants are stored once"
    scalars = [t.name for t in model.graph.initializer if t.name.startswith("const/")]
    assert len(scalars) == 2, "the two relu6 layers share their 0 and 6"


def test_metadata_and_versions():
    graph = load_text(SPEC, "emit.cnn")
    graph.meta["passes"] = ["fold-bn", "bottleneck(ratio=0.5)"]
    model = emit_onnx(graph, init_weights(graph, 0))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["producer"].startswith("cnncomp ")
    assert props["spec_hash"] == graph.meta["spec_hash"]
    assert json.loads(props["passes"]) == ["fold-bn", "bottleneck(ratio=0.5)"]
    assert model.producer_name == "cnncomp"
    assert model.opset_import[0].version == 17 and model.opset_import[0].domain == ""
    assert model.ir_version == ir_version_for(17) == 8


def test_deform_conv_raises_the_opset_with_a_notice(helpers):
    notices = []
    graph, model = _emit(DEFORM, notices=notices)
    assert model.opset_import[0].version == 19
    assert model.ir_version == 9
    assert notices == ["DeformConv needs opset 19: raised the model's opset from 17 to 19"]
    helpers.assert_valid_onnx(model)
    notices.clear()
    _, model = _emit(DEFORM, opset=21, notices=notices)
    assert model.opset_import[0].version == 21 and not notices
    helpers.ort_run(model, helpers.random_inputs(graph))  # ONNX Runtime accepts the IR version


def test_opset_errors():
    with pytest.raises(CnnError, match="opset 12 is not supported"):
        _emit(SPEC, opset=12)
    with pytest.raises(CnnError, match=r"HardSwish \(layer y.0, emit.cnn:3:10\) needs opset 14"):
        _emit("network t\ninput x: [N, 4]\ny = x -> hardswish\noutput y\n", opset=13)


def test_outputs_renamed_through_identity(helpers):
    # Output `b` is layer b.0, while the relu layer itself is named `b` (and is output `a`);
    # output `z` is the same tensor as `y`; output `x` is the graph input.
    text = """network t
input x: [N, 3, 4, 4]
a = x -> relu as b
b = x -> tanh
y = x -> sigmoid
z = y
output b, a, y, z, x
"""
    result = helpers.compare(text)
    assert [o.name for o in result.model.graph.output] == ["b", "a", "y", "z", "x"]
    x = result.inputs["x"]
    np.testing.assert_allclose(result.got["a"], np.maximum(x, 0))
    np.testing.assert_allclose(result.got["b"], np.tanh(x), rtol=1e-6)
    np.testing.assert_array_equal(result.got["y"], result.got["z"])
    np.testing.assert_array_equal(result.got["x"], x)


def test_wrong_weights_are_reported():
    graph = load_text(SPEC, "emit.cnn")
    weights = init_weights(graph, 0)
    weights["features.0.weight"] = weights["features.0.weight"][:4]
    del weights["logits.2.bias"]
    with pytest.raises(CnnError) as err:
        emit_onnx(graph, weights)
    assert "missing: logits.2.bias [5]" in err.value.message
    assert "features.0.weight is [4, 3, 3, 3], the spec expects [8, 3, 3, 3]" in err.value.message


def test_check_onnx_reports_an_invalid_model():
    _, model = _emit(SPEC)
    check_onnx(model)
    model.graph.node[0].input[0] = "nowhere"
    with pytest.raises(CnnError, match="the emitted ONNX model is invalid"):
        check_onnx(model)


def test_save_onnx_round_trip(tmp_path):
    _, model = _emit(SPEC)
    path = tmp_path / "model.onnx"
    save_onnx(model, path)
    assert onnx.load(str(path)).SerializeToString() == model.SerializeToString()
    first = path.read_bytes()
    save_onnx(model, path)
    assert path.read_bytes() == first  # the file itself is deterministic too
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_save_onnx_leaves_no_partial_file(tmp_path, monkeypatch):
    _, model = _emit(SPEC)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous")
    import cnncomp.emit.onnx.save as emit

    def half_then_fail(model, tmp):
        Path(tmp).write_bytes(model.SerializeToString()[:100])
        raise OSError("disk full")

    monkeypatch.setattr(emit, "_write_streamed", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_onnx(model, path)
    monkeypatch.undo()
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["model.onnx"]
    with pytest.raises(OSError):
        save_onnx(model, tmp_path / "missing_dir" / "model.onnx")
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_save_onnx_external_data(tmp_path, helpers):
    graph, model = _emit(SPEC.replace("conv(8, k=1)", "conv(8, k=3, p=1)"))  # weights over the 1 KiB threshold
    path = tmp_path / "model.onnx"
    save_onnx(model, path, external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.onnx.data"]
    from onnx.external_data_helper import uses_external_data

    bare = {t.name: t for t in onnx.load(str(path), load_external_data=False).graph.initializer}
    assert uses_external_data(bare["skip.0.weight"]) and not uses_external_data(bare["logits.2.bias"])
    onnx.checker.check_model(str(path), full_check=True)
    loaded = onnx.load(str(path))
    assert {t.name: t.raw_data for t in loaded.graph.initializer} == \
        {t.name: t.raw_data for t in model.graph.initializer}
    inputs = helpers.random_inputs(graph)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, inputs)
    want = helpers.ort_run(model, inputs)
    np.testing.assert_array_equal(got[0], want["logits"])
    assert model.graph.initializer[0].raw_data, "the caller's model keeps its weights"


@pytest.mark.parametrize("opset", [14, 18, 21])
def test_other_opsets(opset, helpers):
    text = SPEC.replace("-> prelu", "-> prelu -> upsample(mode=\"linear\") -> avgpool(k=3, s=2, p=1, ceil=true, "
                                    "count_pad=true) -> kmaxpool(5) -> hardswish -> pad(1) -> shuffle(2)")
    result = helpers.compare(text, opset=opset, float64=False)
    assert result.model.opset_import[0].version == opset


def test_ceil_mode_becomes_explicit_padding(helpers):
    # onnx 1.23 shape inference sizes ceil-mode pools without PyTorch's "drop a last window that
    # starts in the end padding" rule (it says 4 here; PyTorch and ONNX Runtime give 3), so strict
    # inference would refuse the declared output shape. The lowering pads explicitly instead.
    text = "network t\ninput x: [N, 3, 5, 5]\ny = x -> maxpool(k=2, s=2, p=1, ceil=true)\n" \
           "z = x -> avgpool(k=2, s=2, ceil=true, count_pad=true)\noutput y, z\n"
    result = helpers.compare(text)
    for node in result.model.graph.node:
        assert all(a.name != "ceil_mode" or a.i == 0 for a in node.attribute)
    assert result.got["y"].shape == (2, 3, 3, 3) and result.got["z"].shape == (2, 3, 3, 3)
