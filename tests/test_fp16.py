"""--precision fp16: float16 weights and compute after the passes, checked against the float64 reference
with the float16 tolerances; overflow and subnormal warnings; float32 I/O; ops kept in float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import cli
from onnx import TensorProto

from cnncomp.pipeline import emit_model, optimize
from cnncomp.precision.fp16 import (
    FP16_MAX,
    cast_feeds,
    convert_fp16,
    fp16_graph,
    missing_kernel,
    to_fp16,
)
from cnncomp.verification.harness import make_inputs, verify

ROOT = Path(__file__).resolve().parents[1]
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16

# Small inputs, the ops of the bundled networks: basic and inverted-residual blocks (resnet18,
# mobilenet_v2), concat, max pooling, upsampling (Resize, whose scales stay float32), channel shuffle.
MIXED = """network mixed
input x: [N, 3, 32, 32]
stem = x -> conv(16, k=3, s=2, p=1, bias=false) as conv1 -> bn as bn1 -> relu as relu
r = stem -> basic_block(16) as res1 -> basic_block(32, stride=2) as res2
m = r -> inverted_residual(32, 4) as ir1 -> inverted_residual(48, 6, stride=2) as ir2
u = m -> upsample(2) as up
c = concat(u, r) -> shuffle(2) as shuffle -> maxpool(k=3, s=2, p=1) as pool
y = c -> conv(8, k=1) as head -> sigmoid as gate -> gap as gap -> flatten as flat -> linear(10) as fc
output y
"""


def compiled(tmp_path, text=MIXED, weights=None, **kw):
    spec = tmp_path / "net.cnn"
    spec.write_text(text)
    c = optimize(str(spec), weights=weights, **kw)
    return c, emit_model(c)


def check(c, model, batch=2):
    inputs = cast_feeds(model, make_inputs(c.ref_graph, 0, (-1.0, 1.0), batch))
    report, _, outputs = verify(c.ref_graph, c.ref_weights, model, fp16_graph(c.graph), inputs=inputs,
                                precision="fp16", per_layer=True)
    return report, outputs


def elem(vi) -> int:
    return vi.type.tensor_type.elem_type


def test_mixed_network_in_fp16_on_cpu(tmp_path):
    c, model = compiled(tmp_path)
    m16, report = to_fp16(model, probe_provider="cpu")
    assert [elem(v) for v in m16.graph.input] == [FLOAT16] and [elem(v) for v in m16.graph.output] == [FLOAT16]
    kinds = {t.name: t.data_type for t in m16.graph.initializer if t.data_type in (FLOAT, FLOAT16)}
    assert {n for n, k in kinds.items() if k == FLOAT} == {i for n in m16.graph.node if n.op_type == "Resize"
                                                          for i in n.input[2:3]}  # only Resize scales
    assert report.converted == sum(1 for k in kinds.values() if k == FLOAT16)
    assert not report.warnings and not report.fp32_ops
    result, outputs = check(c, m16)
    assert result.ok, result.format()
    assert outputs["y"].dtype == np.float16
    assert result.precision == "fp16" and result.outputs["y"].rtol == 1e-2
    assert len(result.layers) > 20 and result.first_divergent_layer is None
    assert dict((p.key, p.value) for p in m16.metadata_props)["precision"] == "fp16"


def test_conversion_happens_after_folding(tmp_path):
    c, model = compiled(tmp_path)
    assert "fold-bn" in c.graph.meta["passes"]
    m16, _ = to_fp16(model)
    assert not any(n.op_type == "BatchNormalization" for n in m16.graph.node)
    assert not any(t.name.startswith("bn1.") for t in m16.graph.initializer)


def test_keep_io_fp32(tmp_path):
    c, model = compiled(tmp_path)
    m16, _ = to_fp16(model, keep_io_fp32=True, probe_provider="cpu")
    assert [elem(v) for v in m16.graph.input] == [FLOAT] and [elem(v) for v in m16.graph.output] == [FLOAT]
    casts = [n for n in m16.graph.node if n.op_type == "Cast"]
    assert casts[0].input == ["x"] and casts[-1].output == ["y"]
    assert dict((p.key, p.value) for p in m16.metadata_props)["precision"].startswith("fp16 (float32 inputs")
    result, outputs = check(c, m16)
    assert result.ok, result.format()
    assert outputs["y"].dtype == np.float32


@pytest.mark.parametrize("spec, defines", [("resnet18.cnn", {"width": "8", "num_classes": "10"}),
                                           ("textcnn.cnn", None), ("deformable_net.cnn", {"width": "8"})])
def test_bundled_specs_in_fp16(spec, defines):
    c = optimize(str(ROOT / "specs" / spec), defines)
    m16, _ = to_fp16(emit_model(c), probe_provider="cpu")
    result, _ = check(c, m16, batch=1)
    assert result.ok, result.format()


def test_overflow_and_subnormal_weights_are_reported(tmp_path):
    from cnncomp.ir.weights import init_weights
    from cnncomp.pipeline import load as load_graph

    spec = tmp_path / "net.cnn"
    spec.write_text(MIXED)
    weights = init_weights(load_graph(str(spec)), 0)
    weights["fc.weight"] = weights["fc.weight"].copy()
    weights["fc.weight"][0, :3] = [1e5, -7e4, 1e6]
    weights["head.weight"] = weights["head.weight"] * 1e-6  # every value subnormal in float16
    c = optimize(str(spec), weights=weights)
    m16, report = to_fp16(emit_model(c))
    over = [w for w in report.warnings if "'fc.weight'" in w]
    assert len(over) == 1 and "3 of 80 values overflow float16" in over[0] and "clamped" in over[0]
    tiny = [w for w in report.warnings if "'head.weight'" in w]
    assert len(tiny) == 1 and "subnormal" in tiny[0] and "relative L2" in tiny[0]
    assert len(report.warnings) == 2  # one line per weight; ordinary weights only in the summary note
    assert any("other weight(s)" in n for n in report.notes)
    fc = next(t for t in m16.graph.initializer if t.name == "fc.weight")
    values = onnx.numpy_helper.to_array(fc)
    assert values.dtype == np.float16 and np.isfinite(values).all()
    assert values[0, 0] == FP16_MAX and values[0, 1] == -FP16_MAX


def test_ops_kept_in_fp32_with_casts(tmp_path):
    c, model = compiled(tmp_path)
    m16, report = convert_fp16(model, fp32_ops={"Conv"})
    convs = [n for n in m16.graph.node if n.op_type == "Conv"]
    producers = {o: n for n in m16.graph.node for o in n.output}
    inits = {t.name: t for t in m16.graph.initializer}
    for conv in convs:
        assert producers[conv.input[0]].op_type == "Cast"
        assert all(inits[w].data_type == FLOAT for w in conv.input[1:] if w)
        assert conv.output[0].endswith("/fp32")
    assert report.fp32_ops == ["Conv"] and len(report.fp32_nodes) == len(convs)
    assert "kept" in report.notes[0] and "Conv" in report.notes[0]
    result, _ = check(c, m16)
    assert result.ok, result.format()


def test_missing_fp16_kernel_is_kept_in_fp32(tmp_path, monkeypatch):
    """A provider without a float16 kernel for an op: the op is found from ONNX Runtime's message and kept
    in float32 (simulated: this ONNX Runtime's CPU provider casts around such ops itself)."""
    import cnncomp.precision.fp16 as fp16

    c, model = compiled(tmp_path)
    calls = []

    def fake_session(m, provider):
        calls.append(provider)
        half_gemm = any(n.op_type == "Gemm" and not n.output[0].endswith("/fp32") for n in m.graph.node)
        if half_gemm:
            return ("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Gemm(13) "
                    "node with name 'fc'")
        return None

    monkeypatch.setattr(fp16, "_try_session", fake_session)
    m16, report = to_fp16(model, probe_provider="cpu")
    assert calls == ["cpu", "cpu"]
    assert report.fp32_ops == ["Gemm"]
    assert missing_kernel("Could not find an implementation for Conv(11) node with name 'c1'") == "Conv"
    assert missing_kernel("something else") is None

    monkeypatch.setattr(fp16, "_try_session", lambda m, p: "[ONNXRuntimeError] : 1 : FAIL : out of memory")
    with pytest.raises(Exception, match="cannot load the float16 model: .*out of memory"):
        to_fp16(model, probe_provider="cpu")


# ---- the command line --------------------------------------------------------------------


def test_verify_precision_fp16_says_so(tmp_path, capsys):
    spec = tmp_path / "net.cnn"
    spec.write_text(MIXED)
    code, out, _ = cli(capsys, "verify", spec, "--precision", "fp16", "--per-layer")
    assert code == 0, out
    assert "(cpu, fp16;" in out and "float16 tolerances: atol = 0.01 * max|reference|, rtol = 0.01" in out
    code, out, _ = cli(capsys, "verify", spec, "--precision", "fp16", "--json")
    import json

    data = json.loads(out)
    assert code == 0 and data["ok"] and data["precision"] == "fp16"
    assert data["outputs"]["y"]["rtol"] == 0.01


def test_compile_fp16_with_fp32_io(tmp_path, capsys):
    spec = tmp_path / "net.cnn"
    spec.write_text(MIXED)
    out_path = tmp_path / "net16.onnx"
    code, out, _ = cli(capsys, "compile", spec, "-o", out_path, "--precision", "fp16", "--keep-io-fp32", "--verify")
    assert code == 0 and "fp16" in out
    model = onnx.load(str(out_path))
    assert elem(model.graph.input[0]) == FLOAT
    assert any(t.data_type == FLOAT16 for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)


def test_keep_io_without_fp16_is_bad_usage(tmp_path, capsys):
    spec = tmp_path / "net.cnn"
    spec.write_text(MIXED)
    code, _, err = cli(capsys, "compile", spec, "-o", tmp_path / "x.onnx", "--keep-io-fp32")
    assert code == 2 and "--precision fp16" in err
    assert not (tmp_path / "x.onnx").exists()
