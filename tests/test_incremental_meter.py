"""-O3's output-error meter reruns only the layers a trial rewrite changed (run/incremental.py),
and measures the same errors as running the whole trial graph, so the search keeps the same rewrites."""

from pathlib import Path

import pytest

from cnncomp import pipeline
from cnncomp.passes import PassContext, PassRunner
from cnncomp.passes.manager import PassStep
from cnncomp.pipeline import OutputErrorMeter, load, optimize, weights_for
from cnncomp.verification.harness import make_inputs

SPEC = str(Path(__file__).resolve().parents[1] / "specs" / "resnet18.cnn")
DEFINES = {"width": 8}

# upstream and downstream in turn, so a commit's stale outputs would show in a later trial
REWRITES = [("layer1.0.conv2", PassStep("bottleneck", {"ratio": 0.5})),
            ("layer4.1.conv2", PassStep("bottleneck", {"ratio": 0.25})),
            ("layer2.0.conv1", PassStep("depthwise", {"m": 2})),
            ("layer3.1.conv1", PassStep("bottleneck", {"ratio": 0.125})),
            ("conv1", PassStep("depthwise", {"m": 1}))]


def test_the_incremental_error_is_the_full_error_through_a_few_rewrites():
    graph = load(SPEC, DEFINES)
    weights = weights_for(graph)
    meter = OutputErrorMeter(graph, weights, make_inputs(graph, 0, batch=2))
    ctx = PassContext(graph.copy(), dict(weights))
    runner = PassRunner(ctx)
    meter.commit(ctx.graph, ctx.weights)
    assert meter.error(ctx.graph, ctx.weights, "conv1") == pytest.approx(meter(ctx.graph, ctx.weights), rel=1e-9)
    for layer, step in REWRITES:
        for setting in (step, PassStep("bottleneck", {"ratio": 0.75})):  # a trial not kept, then the kept one
            trial = PassContext(ctx.graph.copy(), dict(ctx.weights))
            assert runner.passes[setting.name].fn(trial, only=layer, **setting.options)
            full = meter(trial.graph, trial.weights)
            assert meter.error(trial.graph, trial.weights, layer) == pytest.approx(full, rel=1e-9, abs=1e-12)
            assert meter._incremental.recomputed < len(trial.graph) or layer == "conv1"
        runner.run_step(PassStep(step.name, {**step.options, "only": layer}))
        meter.commit(ctx.graph, ctx.weights)
        assert meter.error(ctx.graph, ctx.weights, layer) == pytest.approx(meter(ctx.graph, ctx.weights), rel=1e-9)
        assert meter._incremental.recomputed == 0


def test_O3_keeps_the_same_rewrites_as_with_full_runs(monkeypatch):
    incremental = optimize(SPEC, DEFINES, opt_level=3)

    def full_meter(*args):
        meter = OutputErrorMeter(*args)
        return lambda graph, weights: meter(graph, weights)  # a plain function: the search runs it whole

    monkeypatch.setattr(pipeline, "output_error_meter", full_meter)
    full = optimize(SPEC, DEFINES, opt_level=3)
    assert any(": kept " in line for line in full.log) and any("no rewrite keeps" in line for line in full.log)
    assert incremental.log == full.log
    assert [l.name for l in incremental.graph.layers()] == [l.name for l in full.graph.layers()]
