"""-O3: approximate rewrites chosen per layer under an end-to-end error budget, optionally autotuned."""

import numpy as np

from cnncomp.run.timing import extract, time_subgraph
from cnncomp.verification.harness import verify
from cnncomp.pipeline import emit_model, optimize
from cnncomp.frontend.cnn.loader import load_text
from cnncomp.ir.cost import graph_cost

SPEC = ("network n\ninput x: [N, 16, 16, 16]\n"
        "y = x -> conv(64, k=3, p=1) as c1 -> relu -> conv(64, k=3, p=1) as c2 -> relu -> gap -> flatten\n"
        "    -> linear(10) as fc\noutput y\n")


def _spec(tmp_path):
    path = tmp_path / "n.cnn"
    path.write_text(SPEC)
    return str(path)


def test_O3_keeps_the_error_within_the_budget_and_lowers_macs(tmp_path):
    spec = _spec(tmp_path)
    o1 = optimize(spec, opt_level=1)
    o3 = optimize(spec, opt_level=3, max_error=0.2)
    assert o3.graph.meta.get("approximate")
    assert any("kept" in line for line in o3.log)
    assert graph_cost(o3.graph)[1] < graph_cost(o1.graph)[1]
    report, _, _ = verify(o3.ref_graph, o3.ref_weights, emit_model(o3), o3.graph, max_error=0.2)
    assert report.ok, report.format()
    assert all(c.rel_l2_err <= 0.2 for c in report.outputs.values())


def test_a_tight_budget_refuses_every_rewrite(tmp_path):
    o3 = optimize(_spec(tmp_path), opt_level=3, max_error=1e-9)
    assert not any(layer.name.startswith("c1.") for layer in o3.graph.layers())
    assert any("no rewrite keeps the output error within" in line for line in o3.log)


def test_calibration_inputs_are_used(tmp_path):
    path = tmp_path / "nobias.cnn"
    path.write_text(SPEC.replace("conv(64, k=3, p=1) as c1", "conv(64, k=3, p=1, bias=false) as c1"))
    # on zero inputs c1 outputs zeros before and after any rewrite, so even a tiny budget accepts one
    calibration = {"x": np.zeros((2, 16, 16, 16), np.float32)}
    o3 = optimize(str(path), opt_level=3, max_error=1e-5, calibration=calibration)
    assert any(layer.name.startswith("c1.") for layer in o3.graph.layers())
    assert not any(layer.name.startswith("c1.") for layer in optimize(str(path), opt_level=3, max_error=1e-5)
                   .graph.layers())


def test_autotune_times_layers_alone_and_decides(tmp_path):
    graph = load_text(SPEC, "n.cnn")
    part = extract(graph, ["c2"])
    assert part.inputs == ["x"] and part.layer("c2").shape == (1, 64, 16, 16)
    assert time_subgraph(graph, ["c2"], repeats=3) > 0
    o3 = optimize(_spec(tmp_path), opt_level=3, max_error=0.5, autotune=True)
    decided = [line for line in o3.log if "measured" in line or "kept" in line]
    assert decided, o3.log


def test_autotune_times_rewrites_in_the_jobs_precision(tmp_path, monkeypatch):
    """With --precision int8, -O3 --autotune times each layer as the int8 kernels ONNX Runtime will run
    (float32 timings rank the rewrites differently there)."""
    from cnncomp.cli import main
    from cnncomp.precision.int8 import quantized_for_timing, session_kernels
    import cnncomp.run.timing as timing

    graph = load_text(SPEC, "n.cnn")
    int8_part = quantized_for_timing(emit_model(optimize(graph, opt_level=1)))
    assert session_kernels(int8_part).get("QLinearConv") == 2
    seen = []
    real = timing.rewrite_speedup

    def spy(old, new, layer, provider="cpu", repeats=20, convert=None):
        seen.append(convert)
        return real(old, new, layer, provider, 3, convert)

    monkeypatch.setattr(timing, "rewrite_speedup", spy)
    optimize(_spec(tmp_path), opt_level=3, max_error=0.5, autotune=True)
    assert seen and all(c is None for c in seen)
    seen.clear()
    assert main(["compile", _spec(tmp_path), "-O3", "--autotune", "--max-error", "0.5", "--precision", "int8",
                 "-o", str(tmp_path / "n.onnx")]) == 0
    assert seen and all(c is quantized_for_timing for c in seen)
