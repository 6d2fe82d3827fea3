"""Issue 19's "or says why not": when the written int8 model runs under 80% of its MACs in int8 (or float32 was
written), the int8 summary, --stats and the JSON report say why in one line (Int8Report.shortfall)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cnncomp
from cli_helpers import cli
from cnncomp.precision import int8 as int8_module, int8_speed
from cnncomp.precision.int8 import macs_shares, quantize_int8
from cnncomp.precision.int8_report import Int8Report, LayerSensitivity
from cnncomp.precision.int8_speed import LayerTime

SPEC = ("network shorty\ninput x: [N, 3, 16, 16]\n"
        "y = x -> conv(8, k=3, p=1) as c1 -> relu -> conv(8, k=3, p=1) as c2 -> relu\n"
        "   -> conv(32, k=1) as c3 -> relu -> gap as pool -> flatten as flat -> linear(10) as fc\n"
        "output y\n")


pytestmark = pytest.mark.usefixtures("fresh_timing_cache")


@pytest.fixture
def spec(tmp_path) -> str:
    path = tmp_path / "shorty.cnn"
    path.write_text(SPEC)
    return str(path)


def feeds(count: int = 8) -> dict:
    return {"x": np.random.default_rng(0).standard_normal((count, 3, 16, 16)).astype(np.float32)}


def report_with(**fields) -> Int8Report:
    report = Int8Report("percentile", "cal.npz", 12, 4, max_error=0.01, **fields)
    return report


def test_no_line_at_or_above_the_goal():
    report = report_with(group_macs={"a": 0.9, "b": 0.1}, float_layers=["b"])
    assert report.int8_macs_share == pytest.approx(0.9) and report.shortfall() is None
    assert report_with().shortfall() is None  # shares unknown (symbolic sizes): nothing claimed


def test_each_reason_with_its_share_and_costliest_layers():
    layers = [LayerSensitivity("dw", "", 0.002, 0.10, float_ms=0.05, int8_ms=0.08),  # slower in int8
              LayerSensitivity("first", "", 0.19, 0.15, float_ms=0.14, int8_ms=0.10),  # the metric's choice
              LayerSensitivity("pw", "", 0.03, 0.20, float_ms=0.17, int8_ms=0.13)]  # an island
    report = report_with(group_macs={"dw": 0.10, "first": 0.15, "pw": 0.20, "rest": 0.50, "odd": 0.05},
                         layers=layers, float_layers=["dw", "first", "pw"], islands=[["pw"]],
                         no_int8_kernel={"odd": "not implemented"})
    assert report.float32_reasons() == {"no-kernel": ["odd"], "placement": [], "slower": ["dw"], "metric": ["first"],
                                        "islands": ["pw"]}
    line = report.shortfall()
    assert line.startswith("int8: 50% of the MACs run in int8, under 80%: ") and "\n" not in line
    # biggest share first, each with its MACs and what makes it costly
    assert line.index("islands rule put back 1 layer") < line.index("could not afford 1 layer") < \
        line.index("slower in int8")
    assert "(20.0% of the MACs: pw 20.0%)" in line
    assert "first 15.0% error alone 0.19" in line and "dw 10.0% 0.05 -> 0.08 ms" in line
    assert "no usable int8 kernel for 1 layer (5.0% of the MACs: odd 5.0% (not implemented))" in line
    assert line in report.summary() and report.to_json()["shortfall"] == line
    assert report.to_json()["int8_macs_share"] == pytest.approx(0.5)


def test_float32_written_says_int8_was_not_faster():
    report = report_with(group_macs={"a": 1.0}, float_ms=0.61, int8_ms=1.36, written="fp32")
    assert report.int8_macs_share == 0.0
    assert report.shortfall() == ("int8: 0% of the MACs run in int8: the int8 model (100% of its MACs in int8) is "
                                  "not faster than float32 on ONNX Runtime CPU here: float32 0.61 ms, int8 1.36 ms per "
                                  "run (it must be at least 5% faster to count), so float32 was written "
                                  "(--keep-slower-int8 keeps int8)")


def test_float32_written_when_int8_is_faster_by_less_than_the_margin_says_the_margin():
    report = report_with(group_macs={"a": 0.7, "b": 0.3}, float_layers=["b"], float_ms=0.61, int8_ms=0.598,
                         written="fp32")
    line = report.shortfall()
    assert "the int8 model (70% of its MACs in int8) is not faster" in line
    assert "int8 0.598 ms per run (it must be at least 5% faster to count)" in line


def test_nothing_left_in_int8_says_what_kept_each_layer_not_the_timing():
    layers = [LayerSensitivity("a", "", 0.3, 0.7, precision="float32"), LayerSensitivity("b", "", 0.2, 0.3,
                                                                                         precision="float32")]
    report = report_with(group_macs={"a": 0.7, "b": 0.3}, layers=layers, float_layers=["a", "b"], float_ms=10.3,
                         int8_ms=10.3, written="fp32", nothing_quantized=True)
    line = report.shortfall()
    assert line.startswith("int8: 0% of the MACs run in int8, under 80%: the error budget could not afford 2 layers")
    assert "not faster" not in line and "not faster" not in report.summary()


def test_nothing_left_in_int8_on_symbolic_sizes_names_the_layers_without_shares():
    """0% of the MACs holds whatever the sizes; each layer's share is unknown there and not made up as 0.0%."""
    layers = [LayerSensitivity("a", "", 0.3, None, precision="float32")]
    report = report_with(layers=layers, float_layers=["a"], written="fp32", nothing_quantized=True)
    assert report.shortfall() == ("int8: 0% of the MACs run in int8, under 80%: the error budget could not afford "
                                  "1 layer in int8 (a error alone 0.3)")


def test_macs_shares_of_a_spec_and_of_symbolic_sizes(spec, tmp_path):
    model = cnncomp.compile(spec, opt_level=1)
    shares = macs_shares(cnncomp.load(spec), int8_module.layer_groups(model))
    assert set(shares) >= {"c1", "c2", "c3", "fc"} and sum(shares.values()) == pytest.approx(1.0, abs=0.01)
    assert shares["c2"] > shares["c3"] > shares["fc"] > 0
    dynamic = tmp_path / "dyn.cnn"
    dynamic.write_text(SPEC.replace("[N, 3, 16, 16]", "[N, 3, H, W]").replace("gap as pool", "gap as pool"))
    assert macs_shares(cnncomp.load(str(dynamic)), ["c1"]) == {}


def test_quantize_int8_says_which_layers_the_metric_kept(spec, monkeypatch):
    """The search keeps c2 (the largest conv) in float32: the report's line names it with its share."""
    model = cnncomp.compile(spec, opt_level=1)
    graph = cnncomp.load(spec)
    from cnncomp.pipeline import weights_for

    monkeypatch.setattr(int8_speed, "fallback_order", lambda ranked, times: sorted(
        ranked, key=lambda l: (l.layer != "c2", l.layer)))
    monkeypatch.setattr(int8_module, "fewest_within", lambda count, error_of, budget: (1, error_of(1)))
    monkeypatch.setattr(int8_speed, "time_models", lambda *args, **kwargs: (2.0, 1.0, False))
    _, report = quantize_int8(model, graph, graph, weights_for(graph, None, 0), feeds(), max_error=1e-9,
                              metric="rel-l2")
    assert report.float_layers[0] == "c2" and report.float32_reasons()["metric"] == ["c2"]
    share = report.group_macs["c2"]  # others may follow it by the islands rule (c1, timed), each said as such
    assert report.int8_macs_share == pytest.approx(1 - sum(report.group_macs[g] for g in report.float_layers))
    assert report.int8_macs_share < 0.8 and set(report.float32_reasons()["islands"]) == set(report.float_layers[1:])
    assert f"the rel-l2 budget could not afford 1 layer in int8 ({share:.1%} of the MACs: c2 {share:.1%} error " \
        "alone" in report.summary()


def test_cli_stats_and_json_say_why(spec, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(int8_speed, "time_models", lambda *args, **kwargs: (1.0, 1.5, False))
    np.savez(tmp_path / "cal.npz", x=feeds()["x"])
    out = tmp_path / "m.onnx"
    code, _, stderr = cli(capsys, "compile", spec, "--precision", "int8", "--calibration", tmp_path / "cal.npz",
                          "-o", out, "--stats")
    # int8 timed slower: the fallback and the islands rule put every layer back, and the line gives their reasons
    # (not "not faster": with no layer left in int8 there is no int8 model to time)
    assert code == 0 and "int8: 0% of the MACs run in int8, under 80%: " in stderr
    assert "not faster" not in stderr and "no layer is left in int8" in stderr
    code, stdout, _ = cli(capsys, "verify", spec, "--precision", "int8", "--calibration", tmp_path / "cal.npz",
                          "--json")
    data = json.loads(stdout)["fp32"]
    assert code == 0 and data["int8_macs_share"] == 0.0 and data["shortfall"].startswith("int8: 0% of the MACs run in int8, under 80%: ")


# ---- back in int8 after the search -----------------------------------------------------------------------


class CountingQuantizer:
    """quantize(exclude=...) gives the excluded layers back, so that a budget error can be read off them."""

    def __init__(self):
        self.calls = []

    def quantize(self, exclude=()):
        self.calls.append(tuple(exclude))
        return tuple(exclude)


def test_back_to_int8_tries_the_largest_saving_first_and_keeps_what_fits():
    ranked = [LayerSensitivity("a", "", 0.5, 0.1, float_ms=1.0, int8_ms=0.9),  # saves 0.1 ms in int8
              LayerSensitivity("b", "", 0.4, 0.1, float_ms=1.0, int8_ms=0.5),  # saves 0.5 ms
              LayerSensitivity("c", "", 0.3, 0.1, float_ms=1.0, int8_ms=1.2),  # slower in int8: not tried
              LayerSensitivity("d", "", 0.2, 0.1, float_ms=0.0, int8_ms=0.1),  # fused, no float32 time: not tried
              LayerSensitivity("e", "", 0.1, 0.1, float_ms=1.0, int8_ms=0.7)]  # saves 0.3 ms
    # without b in float32 the budget is missed; without e it fits, then without a too it misses
    errors = lambda excluded: 0.4 + 0.7 * ("b" not in excluded) + 0.2 * ("e" not in excluded) + \
        0.5 * ("a" not in excluded)
    quantizer = CountingQuantizer()
    model, error, kept, back = int8_module.back_to_int8(quantizer, errors, ranked, ["a", "b", "c", "d", "e"], "chosen",
                                                        0.4)
    assert [set("abcde") - set(call) for call in quantizer.calls] == [{"b"}, {"e"}, {"e", "a"}]
    assert back == ["e"] and kept == ["a", "b", "c", "d"] and model == tuple(kept)
    assert error == pytest.approx(0.6)


def test_back_to_int8_with_nothing_to_try_keeps_the_model():
    quantizer = CountingQuantizer()
    ranked = [LayerSensitivity("c", "", 0.3, 0.1, float_ms=1.0, int8_ms=1.2), LayerSensitivity("u", "", 0.1, 0.1)]
    assert int8_module.back_to_int8(quantizer, lambda m: 0.0, ranked, ["c", "u"], "chosen", 0.9) == \
        ("chosen", 0.9, ["c", "u"], [])
    assert quantizer.calls == []
