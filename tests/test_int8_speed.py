"""Int8's speed-aware fallback (precision/int8_speed.py): per-layer times from ONNX Runtime's profiler mapped to
the layer groups, their cache, the fallback order, the islands rule and the not-faster rule (timings injected:
no assertion here depends on how fast this machine is)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cnncomp
from cli_helpers import cli
from cnncomp.precision import int8 as int8_module, int8_speed, int8_support
from cnncomp.precision.int8 import Quantizer, layer_groups, quantize_int8
from cnncomp.precision.int8_report import LayerSensitivity
from cnncomp.precision.int8_speed import LayerTime, fallback_order, layer_speed, quantized_islands

ROOT = Path(__file__).resolve().parents[1]
SPEC = ("network speedy\ninput x: [N, 3, 16, 16]\n"
        "y = x -> conv(8, k=3, p=1) as c1 -> bn as b1 -> relu -> conv(8, k=3, p=1) as c2 -> sigmoid as s2\n"
        "   -> conv(16, k=1) as c3 -> relu -> gap as pool -> flatten as flat -> linear(10) as fc\n"
        "output y\n")


@pytest.fixture(autouse=True)
def cache(fresh_timing_cache):
    return fresh_timing_cache


@pytest.fixture
def spec(tmp_path) -> str:
    path = tmp_path / "speedy.cnn"
    path.write_text(SPEC)
    return str(path)


def feeds(count: int = 4, seed: int = 0) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((count, 3, 16, 16)).astype(np.float32)}


@pytest.fixture
def quantized(spec):
    model = cnncomp.compile(spec, opt_level=1)
    quantizer = Quantizer(model, feeds(), "minmax")
    try:
        yield model, quantizer.quantize(), quantizer.groups
    finally:
        quantizer.close()


# ---- the profile mapped to layers ------------------------------------------------------------------------


def test_every_conv_and_gemm_gets_a_time(quantized):
    model, int8_model, groups = quantized
    profile = layer_speed(model, int8_model, groups, feeds(1), {})
    heads = {n.name: n.op_type for n in model.graph.node}
    compute = [g for g in groups if heads[g] in ("Conv", "Gemm")]
    assert sorted(compute) == ["c1", "c2", "c3", "fc"]
    for group in compute:  # c2's float32 kernel is fused with the sigmoid and named after it: still c2's time
        assert profile.layers[group].float_ms > 0 and profile.layers[group].int8_ms > 0, group
    assert profile.float_total_ms >= sum(t.float_ms for t in profile.layers.values())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_every_conv_of_the_bundled_networks_gets_a_time(name):
    """The mapping on real layouts: ResNet's adds fused into its convs, MobileNetV2's depthwise convs."""
    if not os.environ.get("CNNCOMP_SLOW_TESTS"):
        pytest.skip(f"{name}: ~10 s of CPU to quantize and profile; set CNNCOMP_SLOW_TESTS=1 to run it")
    model = cnncomp.compile(str(ROOT / "specs" / f"{name}.cnn"), opt_level=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    quantizer = Quantizer(model, {"x": x}, "minmax")
    try:
        profile = layer_speed(model, quantizer.quantize(), quantizer.groups, {"x": x[:1]}, {})
    finally:
        quantizer.close()
    heads = {n.name: n.op_type for n in model.graph.node}
    compute = [g for g in quantizer.groups if heads[g] in ("Conv", "Gemm")]
    assert len(compute) == {"resnet18": 21, "mobilenet_v2": 53}[name]
    assert all(profile.layers[g].float_ms > 0 and profile.layers[g].int8_ms > 0 for g in compute)
    assert profile.unattributed_ms[0] < 0.05 * profile.float_total_ms


def test_fused_and_renamed_kernels_map_back_to_their_layer(quantized):
    model, _, groups = quantized
    group_of = {m: head for head, members in groups.items() for m in members}
    times = {"c1_token_3": 1.0, "s2_nchwc": 2.0, "fused fc": 3.0, "x_QuantizeLinear": 0.5, "ReorderOutput": 0.25}
    totals, rest = int8_speed.group_times(model, groups, times)
    assert totals["c1"] == 1.0 and totals["c2"] == 2.0 and totals["fc"] == 3.0 and rest == 0.75
    assert int8_speed.owner_of("c3_token_12_nchwc", model, group_of) == "c3"


# ---- the cache -------------------------------------------------------------------------------------------


def test_cache_hit_corrupt_entry_and_key(quantized, cache, monkeypatch):
    model, int8_model, groups = quantized
    calls = []
    real = int8_speed.profile_node_times
    monkeypatch.setattr(int8_speed, "profile_node_times", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = layer_speed(model, int8_model, groups, feeds(1), {"method": "minmax"})
    assert len(calls) == 2 and not first.cached
    again = layer_speed(model, int8_model, groups, feeds(1), {"method": "minmax"})
    assert len(calls) == 2 and again.cached and again.layers == first.layers
    entries = list((cache / "int8-layer-times").glob("*.json"))
    assert len(entries) == 1 and not list((cache / "int8-layer-times").glob(".tmp-*"))
    entries[0].write_text("{not json")
    remeasured = layer_speed(model, int8_model, groups, feeds(1), {"method": "minmax"})
    assert len(calls) == 4 and not remeasured.cached
    json.loads(entries[0].read_text())  # rewritten whole
    entries[0].write_text('{"layers": 3}')  # JSON of the wrong shape: ignored too
    assert not layer_speed(model, int8_model, groups, feeds(1), {"method": "minmax"}).cached
    other = onnx.ModelProto.FromString(model.SerializeToString())
    other.graph.initializer[0].raw_data = bytes(len(other.graph.initializer[0].raw_data))
    key = int8_speed.cache_key
    assert key(model, settings={}) != key(other, settings={})
    assert key(model, settings={"threads": 1}) != key(model, settings={"threads": 2})
    assert key(model, settings={}) == key(onnx.ModelProto.FromString(model.SerializeToString()), settings={})


def test_cache_folder_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CNNCOMP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert int8_speed.cache_dir() == tmp_path / "xdg" / "cnncomp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert int8_speed.cache_dir().parts[-2:] == (".cache", "cnncomp")


def test_unwritable_cache_is_skipped(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("CNNCOMP_CACHE_DIR", str(blocker / "below"))
    int8_speed.write_cache("int8-layer-times", "k", {"a": 1})  # no exception
    assert int8_speed.read_cache("int8-layer-times", "k") is None


# ---- the fallback order ----------------------------------------------------------------------------------


def test_a_layer_slower_in_int8_goes_first():
    ranked = [LayerSensitivity("big", "", 0.5, 0.5), LayerSensitivity("dw", "", 0.01, 0.01),
              LayerSensitivity("fc", "", 0.2, 0.01), LayerSensitivity("untimed", "", 0.9, 0.0)]
    times = {"big": LayerTime(10.0, 3.0), "dw": LayerTime(1.0, 1.2), "fc": LayerTime(0.2, 0.1)}
    order = [l.layer for l in fallback_order(ranked, times)]
    # dw: slower in int8, first; fc: 0.2 error per 0.1 ms = 2/ms beats big: 0.5 per 7 ms; untimed last
    assert order == ["dw", "fc", "big", "untimed"]
    assert ranked[1].float_ms == 1.0 and ranked[1].int8_ms == 1.2
    assert [l.layer for l in fallback_order(ranked, None)] == ["untimed", "big", "fc", "dw"]
    # an add fused into the conv before it in float32 (0 ms of its own) is not taken as slower in int8
    ranked.append(LayerSensitivity("add", "", 0.3, 0.0))
    times["add"] = LayerTime(0.0, 0.05)  # 0.3 per 0.05 ms = 6/ms: before fc
    assert [l.layer for l in fallback_order(ranked, times)] == ["dw", "add", "fc", "big", "untimed"]


# ---- the islands rule ------------------------------------------------------------------------------------


def conv_softmax_conv() -> onnx.ModelProto:
    """x -> conv a -> softmax s -> conv b -> y: a hand-made graph with a softmax between two convs."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), n) for n in "WV"]
    nodes = [helper.make_node("Conv", ["x", "W"], ["t"], name="a"),
             helper.make_node("Softmax", ["t"], ["u"], name="s", axis=1),
             helper.make_node("Conv", ["u", "V"], ["y"], name="b")]
    graph = helper.make_graph(nodes, "island", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_quantized_softmax_between_float32_layers_goes_back():
    model = conv_softmax_conv()
    groups = layer_groups(model)
    assert list(groups) == ["a", "s", "b"]
    assert quantized_islands(model, groups, {"a", "b"}) == [["s"]]
    assert quantized_islands(model, groups, {"a"}) == []  # s feeds the int8 conv b: one island with a conv
    assert quantized_islands(model, groups, set()) == []  # all int8: nothing is between float32 layers


def test_an_island_that_saves_less_than_its_boundary_goes_back():
    model = conv_softmax_conv()
    groups = layer_groups(model)
    times = {"a": LayerTime(1.0, 0.5), "s": LayerTime(0.1, 0.1), "b": LayerTime(1.0, 0.8)}
    assert quantized_islands(model, groups, {"a"}, times, lambda island: 0.3) == [["s", "b"]]  # saves 0.2
    assert quantized_islands(model, groups, {"a"}, times, lambda island: 0.1) == []


def test_islands_on_a_spec(spec):
    model = cnncomp.compile(spec, opt_level=1)
    groups = layer_groups(model)
    # c2 and c3 in float32 leave the sigmoid between them quantized alone: it goes back
    assert quantized_islands(model, groups, {"c2", "c3"}) == [["s2"]]
    # c3 in float32: c1, c2, s2 before it and pool, fc after it are islands with a conv or gemm: they stay
    assert quantized_islands(model, groups, {"c3"}) == []
    assert quantized_islands(model, groups, {"c3", "fc"}) == [["pool"]]  # a lone pool between them goes back


def test_quantize_int8_leaves_no_island_without_a_conv(spec, monkeypatch):
    model = cnncomp.compile(spec, opt_level=1)
    graph = cnncomp.load(spec)
    from cnncomp.pipeline import weights_for

    weights = weights_for(graph, None, 0)
    # the search keeps c2 and c3 in float32 (ranked first, and two taken): the sigmoid between them is an island
    monkeypatch.setattr(int8_speed, "fallback_order", lambda ranked, times: sorted(
        ranked, key=lambda l: (l.layer not in ("c2", "c3"), l.layer)))
    monkeypatch.setattr(int8_module, "fewest_within", lambda count, error_of, budget: (2, error_of(2)))
    _, report = quantize_int8(model, graph, graph, weights, feeds(8), max_error=1e-9, metric="rel-l2")
    assert report.float_layers[:2] == ["c2", "c3"] and "s2" in report.float_layers
    assert quantized_islands(model, layer_groups(model), set(report.float_layers)) == []
    assert any("s2" in island for island in report.islands) and "islands rule" in report.summary()


# ---- the not-faster rule ---------------------------------------------------------------------------------


def fake_times(float_ms, int8_ms):
    return lambda *args, **kwargs: (float_ms, int8_ms, False)


def quantize_linear_count(path) -> int:
    return sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)


def compile_int8(spec, out, **options) -> tuple[onnx.ModelProto, str]:
    lines = []
    model = cnncomp.compile(spec, output=out, precision="int8", calibration={"x": feeds(8)["x"]}, log=lines.append,
                            **options)
    return model, "".join(lines)


def test_int8_not_faster_writes_float32(spec, tmp_path, monkeypatch):
    monkeypatch.setattr(int8_speed, "time_models", fake_times(1.0, 0.98))  # 2% faster: within the margin
    out = tmp_path / "m.onnx"
    model, log = compile_int8(spec, out, verify=True)
    assert quantize_linear_count(out) == 0 and not any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert "float32 1 ms, int8 0.98 ms per run" in log and "int8 is not faster" in log
    assert "wrote the float32 model" in log
    report = cnncomp.verify(spec, precision="int8", calibration={"x": feeds(8)["x"]})
    assert report.ok and report.precision == "fp32"


def test_keep_slower_int8_keeps_it(spec, tmp_path, monkeypatch):
    monkeypatch.setattr(int8_speed, "time_models", fake_times(1.0, 2.0))
    out = tmp_path / "m.onnx"
    _, log = compile_int8(spec, out, keep_slower_int8=True)
    assert quantize_linear_count(out) > 0 and "kept int8 as asked" in log
    report = cnncomp.verify(spec, precision="int8", calibration={"x": feeds(8)["x"]}, keep_slower_int8=True)
    assert report.ok and report.precision == "int8"


def test_int8_faster_is_written(spec, tmp_path, monkeypatch):
    monkeypatch.setattr(int8_speed, "time_models", fake_times(2.0, 1.0))
    # no placement rules: they would keep the toy's 160-MAC fc in float32, and the islands rule, timing the toy's
    # layers for real, would then put the rest back too (they save nothing here); this test is about the
    # whole-model rule
    monkeypatch.setitem(int8_support.PLACEMENT_RULES, "onnxruntime-cpu", ())
    out = tmp_path / "m.onnx"
    _, log = compile_int8(spec, out)
    assert quantize_linear_count(out) > 0 and "2.00x as fast" in log


def test_not_faster_rule_on_the_command_line(spec, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(int8_speed, "time_models", fake_times(1.0, 1.5))
    np.savez(tmp_path / "cal.npz", x=feeds(8)["x"])
    out = tmp_path / "m.onnx"
    code, stdout, stderr = cli(capsys, "compile", spec, "--precision", "int8", "--calibration", tmp_path / "cal.npz",
                               "-o", out, "--verify")
    assert code == 0 and quantize_linear_count(out) == 0
    assert "wrote the float32 model (--keep-slower-int8 keeps int8)" in stderr and "cpu, fp32" in stdout
    code, stdout, stderr = cli(capsys, "verify", spec, "--precision", "int8", "--calibration", tmp_path / "cal.npz")
    assert code == 0 and "cpu, fp32" in stdout
    code, stdout, _ = cli(capsys, "verify", spec, "--precision", "int8", "--calibration", tmp_path / "cal.npz",
                          "--json")
    data = json.loads(stdout)
    # the int8 converter's report goes under the precision checked (harness: {precision: details})
    assert code == 0 and data["precision"] == "fp32" and data["fp32"]["written"] == "fp32"
    assert data["fp32"]["float_ms"] == 1.0 and data["fp32"]["int8_ms"] == 1.5
    code, stdout, stderr = cli(capsys, "compile", spec, "--precision", "int8", "--calibration", tmp_path / "cal.npz",
                               "-o", out, "--verify", "--keep-slower-int8")
    assert code == 0 and quantize_linear_count(out) > 0 and "cpu, int8" in stdout
    assert "kept int8 as asked (--keep-slower-int8)" in stderr
    code, _, stderr = cli(capsys, "deploy", spec, "--triton", tmp_path / "repo", "--precision", "int8",
                          "--calibration", tmp_path / "cal.npz")
    assert code == 0 and quantize_linear_count(tmp_path / "repo" / "speedy" / "1" / "model.onnx") == 0
    assert "wrote the float32 model" in stderr
    code, _, stderr = cli(capsys, "compile", spec, "--keep-slower-int8", "-o", out)
    assert code == 2 and "--keep-slower-int8" in stderr


def test_interleaved_timing_is_cached(quantized):
    model, int8_model, _ = quantized
    float_ms, int8_ms, cached = int8_speed.time_models(model, int8_model, {"x": feeds(1)["x"]})
    assert float_ms > 0 and int8_ms > 0 and not cached
    assert int8_speed.time_models(model, int8_model, {"x": feeds(1)["x"]}) == (float_ms, int8_ms, True)


def test_margin():
    assert int8_speed.int8_is_faster(10.0, 9.0) and not int8_speed.int8_is_faster(10.0, 9.6)
    assert not int8_speed.int8_is_faster(10.0, 12.0)
