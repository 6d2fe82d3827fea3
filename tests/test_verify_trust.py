"""Verify's verdicts (issue 10, items 5 and 7): non-finite reference values, the budget message,
and per-layer blame that names the rewritten layer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cnncomp.cli import main
from cnncomp.verification.compare import compare

SPEC = "network n\ninput x: [N, 4, 10, 10]\ny = x -> conv(8, k=3, p=1, bias=false) as c1 -> bn as b1 -> relu\n" \
       "    -> conv(8, k=3, p=1) as c2 -> relu -> gap -> flatten -> linear(3) as fc\noutput y\n"


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# ---- non-finite reference values -----------------------------------------------------------


def test_tolerance_comes_from_finite_reference_values_only():
    ref = np.array([1.0, 2.0, np.inf, 4.0])
    got = ref + np.array([0.0, 1.0, 0.0, 0.0])  # 2 -> 3: far outside 1e-4 * max|finite ref|
    c = compare(got, ref, None, None)
    assert c.atol == pytest.approx(4e-4)
    assert not c.ok


def test_inf_matching_in_position_and_sign_agrees_and_is_flagged():
    ref = np.array([1.0, np.inf, -np.inf, 4.0])
    c = compare(ref.astype(np.float32), ref, None, None)
    assert c.ok and c.problem is None
    assert "2 Inf in the reference" in c.nonfinite and "matched" in c.describe()


@pytest.mark.parametrize("got", [[1.0, -np.inf, -np.inf, 4.0], [1.0, 5.0, -np.inf, 4.0], [np.inf, np.inf, -np.inf, 4]])
def test_inf_of_the_wrong_sign_or_place_fails(got):
    ref = np.array([1.0, np.inf, -np.inf, 4.0])
    c = compare(np.array(got), ref, None, None)
    assert not c.ok and "Inf" in c.problem


def test_comparison_json_is_strict():
    c = compare(np.zeros(3), np.zeros(4), None, None)  # shape mismatch: infinite statistics
    assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in c.to_json().values())
    json.dumps(c.to_json(), allow_nan=False)


def test_verify_json_stays_strict_when_the_runtime_overflows(tmp_path, capsys):
    spec = tmp_path / "big.cnn"
    spec.write_text("network big\ninput x: [N, 4]\ny = add(x, x)\noutput y\n")
    np.savez(tmp_path / "in.npz", x=np.full((2, 4), 3e38, np.float32))  # float32 overflows, float64 does not
    assert main(["verify", str(spec), "--load-inputs", str(tmp_path / "in.npz"), "--json"]) == 1
    report = strict_json(capsys.readouterr().out)
    assert report["ok"] is False and "Inf in the output" in report["outputs"]["y"]["problem"]


# ---- the budget message ----------------------------------------------------------------------


def test_a_failed_budget_says_exceeds():
    ref = np.ones(100)
    c = compare(ref * 1.5, ref, None, None, max_error=0.01)
    assert not c.ok and "exceeds budget 0.01" in c.describe() and "within" not in c.describe()
    assert "within budget" in compare(ref, ref, None, None, max_error=0.01).describe()


# ---- per-layer blame names the rewritten layer ---------------------------------------------------


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "n.cnn"
    path.write_text(SPEC)
    return str(path)


@pytest.fixture
def break_folded_conv(breaking_pass):
    """A deliberately wrong pass: it scales c1's weights by 1.5 after fold-bn folded b1 into it."""
    return breaking_pass("c1")


def test_per_layer_names_the_rewritten_layer_not_the_folded_one(spec, break_folded_conv, capsys):
    assert main(["verify", spec, "--passes", f"fold-bn,{break_folded_conv}", "--per-layer", "--json"]) == 1
    out = strict_json(capsys.readouterr().out)
    assert out["first_divergent_layer"] == "c1"
    assert out["first_divergent_compared_with"] == "b1"
    assert out["first_divergent_location"].endswith("n.cnn:3:10")


def test_per_layer_names_the_layer_a_bottleneck_rewrote(spec, capsys):
    from cnncomp.verification.harness import rewritten_layer
    from cnncomp.pipeline import load as load_graph

    graph = load_graph(spec)
    assert rewritten_layer("c2.1", graph) == "c2" and rewritten_layer("c1", graph) == "c1"
    assert rewritten_layer("nothing.2", graph) is None
    code = main(["verify", spec, "--passes", "fold-bn,bottleneck(ratio=0.25)", "--max-error", "1e-9",
                 "--per-layer", "--json"])
    out = strict_json(capsys.readouterr().out)
    assert code == 1 and out["first_divergent_layer"] in ("c1", "c2")
    assert "." not in out["first_divergent_layer"]


def test_relative_output_error_keeps_nan():
    from cnncomp.verification.compare import relative_output_error

    nan = np.full(4, np.nan)
    assert math.isnan(relative_output_error({"y": nan}, {"y": nan}))
    assert math.isnan(relative_output_error({"y": np.ones(4)}, {"y": nan}))
    assert relative_output_error({"y": np.ones(4)}, {"y": np.ones(4)}) == 0.0
