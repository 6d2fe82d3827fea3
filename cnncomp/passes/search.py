"""-O3: the approximate rewrites, chosen layer by layer under an end-to-end error budget.

Candidates are the convs that `bottleneck` or `depthwise` can rewrite, largest MACs
first. For each, the settings are tried from the cheapest (fewest MACs) up, each on a
copy of the graph; a setting is kept when the network's relative output error,
||y - y_ref|| / ||y_ref|| over every output with all rewrites kept so far, stays
within `max_error`. With a `speedup` meter (--autotune), a setting is kept only
where it also measures at least MIN_SPEEDUP faster than the original layer.

The search measures nothing itself: the caller passes in `output_error` (the
pipeline runs the reference interpreter on calibration or seeded inputs) and
`speedup` (ONNX Runtime timing), so passes/ stays below run/ and verification/.
`output_error` is a function (graph, weights) -> error, or an `ErrorMeter`: one whose
`error(graph, weights, layer)` is told the rewritten layer and whose `commit(graph, weights)`
is told each graph the search moves to (its start and every kept rewrite), so that it can
rerun only what a trial changed (the pipeline's meter does). A meter whose `jobs` is above 1
also has `errors([(graph, weights, layer), ...])`: the search then measures all of a layer's
trials at once (in parallel) and still keeps the cheapest within budget, as one at a time would.
A kept rewrite is committed by running its pass on the real graph through the
manager's step runner, so lint, --verify-each and --stats see it like any pass.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from cnncomp.ir.cost import layer_macs
from cnncomp.ir.graph import LayerGraph
from cnncomp.passes.manager import PassContext, PassRunner, PassStep, graph_cost
from cnncomp.progress import progress

RATIOS = (0.125, 0.25, 0.5, 0.75)
MULTIPLIERS = (1, 2, 4)
DEFAULT_MAX_ERROR = 0.01
MIN_SPEEDUP = 1.05

# (graph, weights) -> the network's relative output error against the unoptimized reference
OutputError = Callable[[LayerGraph, dict], float]
# (graph before, graph after, rewritten layer) -> how many times faster the rewrite runs
Speedup = Callable[[LayerGraph, LayerGraph, str], float]


class ErrorMeter(Protocol):
    """An output-error measure told the rewritten layer and the graph the search stands on."""

    def error(self, graph: LayerGraph, weights: dict, layer: str) -> float: ...

    def commit(self, graph: LayerGraph, weights: dict) -> None: ...


class _PlainMeter:
    """An `OutputError` function as an `ErrorMeter` (it measures each trial whole)."""

    def __init__(self, fn: OutputError):
        self.fn = fn

    def error(self, graph: LayerGraph, weights: dict, layer: str) -> float:
        return self.fn(graph, weights)

    def commit(self, graph: LayerGraph, weights: dict) -> None:
        pass


def as_meter(output_error: OutputError | ErrorMeter) -> ErrorMeter:
    """The search's meter: an ErrorMeter as given, a plain OutputError function wrapped."""
    return output_error if hasattr(output_error, "error") and hasattr(output_error, "commit") \
        else _PlainMeter(output_error)


def settings() -> list[PassStep]:
    """The settings tried on each layer (the search orders them by the MACs they leave)."""
    return [PassStep("bottleneck", {"ratio": r}) for r in RATIOS] + \
        [PassStep("depthwise", {"m": m}) for m in MULTIPLIERS]


def apply_within_budget(runner: PassRunner, output_error: OutputError | ErrorMeter, max_error: float | None = None,
                        speedup: Speedup | None = None) -> int:
    """Apply bottleneck/depthwise rewrites to the layers where they fit the error budget; returns how many."""
    from cnncomp.passes.approx.bottleneck import candidates

    ctx = runner.ctx
    meter = as_meter(output_error)
    budget = DEFAULT_MAX_ERROR if max_error is None else max_error
    kept_count = 0
    # names, not Layer objects: a committed rewrite renames the layer it replaces
    layers = [l.name for l in sorted(candidates(ctx.graph), key=lambda l: -layer_macs(ctx.graph, l))]
    if layers:
        meter.commit(ctx.graph, ctx.weights)
    for layer in progress(layers, label="-O3 rewrites"):
        weights = ctx.graph.layer(layer).weights
        if not all(np.isfinite(ctx.weights[f"{layer}.{suffix}"]).all() for suffix in weights):
            ctx.refuse("-O3", layer, "its weights are not finite (NaN or Inf): no decomposition of them")
            continue
        kept, within_budget = _choose(runner, layer, meter, budget, speedup)
        if kept is None:
            ctx.refuse("-O3", layer, f"no rewrite within the error budget {budget:g} measured faster" if within_budget
                       else f"no rewrite keeps the output error within {budget:g}")
            continue
        setting, error = kept
        runner.run_step(PassStep(setting.name, {**setting.options, "only": layer}), label=f"{setting}@{layer}")
        meter.commit(ctx.graph, ctx.weights)
        ctx.note(setting.name, f"{layer}: kept {setting}, network relative error {error:.3g} (budget {budget:g})")
        kept_count += 1
    ctx.graph.meta["approximate"] = True
    return kept_count


def _choose(runner: PassRunner, layer: str, meter: ErrorMeter, budget: float,
            speedup: Speedup | None) -> tuple[tuple[PassStep, float] | None, bool]:
    """(the cheapest setting whose trial (on a copy) keeps the error within budget and is faster, with its error,
    or None; whether any setting kept the error within budget)."""
    ctx = runner.ctx
    trials = []
    for setting in settings():
        trial = PassContext(ctx.graph.copy(), dict(ctx.weights))
        if not runner.passes[setting.name].fn(trial, only=layer, **setting.options):
            continue
        trials.append((graph_cost(trial.graph)[1], setting, trial))
    trials.sort(key=lambda t: t[0])
    measured, within_budget = None, False
    if getattr(meter, "jobs", 1) > 1:  # measure every trial at once, in parallel (more work, less waiting)
        measured = meter.errors([(trial.graph, trial.weights, layer) for _, _, trial in trials])
    for i, (_, setting, trial) in enumerate(trials):
        error = measured[i] if measured is not None else meter.error(trial.graph, trial.weights, layer)
        if not error <= budget:  # also refuses a NaN error (NaN weights): it measures nothing
            continue
        within_budget = True
        if speedup is not None:
            factor = speedup(ctx.graph, trial.graph, layer)
            if factor < MIN_SPEEDUP:
                ctx.refuse(setting.name, layer, f"{setting} measured {factor:.2f}x under ONNX Runtime")
                continue
        return (setting, error), within_budget
    return None, within_budget
