"""-O3: the approximate rewrites, chosen layer by layer under an end-to-end error budget.

Candidates are the convs that `bottleneck` or `depthwise` can rewrite, largest MACs
first. For each, the budget engine (budget.cheapest_within) picks the cheapest setting
(fewest MACs), each tried on a copy of the graph, whose network relative output error,
||y - y_ref|| / ||y_ref|| over every output with all rewrites kept so far, stays
within SEARCH_SHARE of `max_error` on the search samples (the rest is headroom for other
inputs); a family's dearest setting is measured first and its cheaper ones only when it
fits (the error falls as the rank grows). With a
`speedup` meter (--autotune), a setting is kept only where it also measures at least
MIN_SPEEDUP faster than the original layer.

With `held_out` (the same measure on samples the search never saw: budget.split_held_out),
the final graph must fit there too (within the same share of the budget); when it does not,
the search backs off, undoing the fewest of the last kept rewrites that bring it within
(budget.fewest_within).
Both errors go to `ctx.budget` (a budget.BudgetReport) and the log.

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
from cnncomp.passes.budget import DEFAULT_MAX_ERROR, SEARCH_SHARE, BudgetReport, cheapest_within, fewest_within
from cnncomp.passes.manager import PassContext, PassRecord, PassRunner, PassStep, graph_cost
from cnncomp.progress import progress

RATIOS = (0.125, 0.25, 0.5, 0.75)
MULTIPLIERS = (1, 2, 4)
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
                        speedup: Speedup | None = None, held_out: OutputError | None = None) -> int:
    """Apply bottleneck/depthwise rewrites to the layers where they fit the error budget (on the search samples,
    then on the `held_out` ones when given, backing off until they fit); returns how many are kept."""
    from cnncomp.passes.approx.bottleneck import candidates

    ctx = runner.ctx
    meter = as_meter(output_error)
    budget = DEFAULT_MAX_ERROR if max_error is None else max_error
    # names, not Layer objects: a committed rewrite renames the layer it replaces
    layers = [l.name for l in sorted(candidates(ctx.graph), key=lambda l: -layer_macs(ctx.graph, l))]
    if not layers:
        ctx.graph.meta["approximate"] = True
        return 0
    meter.commit(ctx.graph, ctx.weights)
    states = [_State.of(runner, meter.error(ctx.graph, ctx.weights, layers[0]), held_out is not None)]
    for layer in progress(layers, label="-O3 rewrites"):
        weights = ctx.graph.layer(layer).weights
        if not all(np.isfinite(ctx.weights[f"{layer}.{suffix}"]).all() for suffix in weights):
            ctx.refuse("-O3", layer, "its weights are not finite (NaN or Inf): no decomposition of them")
            continue
        kept, within_budget = _choose(runner, layer, meter, budget * SEARCH_SHARE, speedup)
        if kept is None:
            aim = f"{budget * SEARCH_SHARE:.3g} ({SEARCH_SHARE:.0%} of the budget {budget:g})"
            ctx.refuse("-O3", layer, f"no rewrite within {aim} measured faster" if within_budget
                       else f"no rewrite keeps the output error within {aim}")
            continue
        setting, error = kept
        runner.run_step(PassStep(setting.name, {**setting.options, "only": layer}), label=f"{setting}@{layer}")
        meter.commit(ctx.graph, ctx.weights)
        ctx.note(setting.name, f"{layer}: kept {setting}, network relative error {error:.3g} (budget {budget:g}, "
                               f"searched within {budget * SEARCH_SHARE:.3g})")
        states.append(_State.of(runner, error, held_out is not None, f"{setting}@{layer}"))
    ctx.graph.meta["approximate"] = True
    kept_count = len(states) - 1
    ctx.budget = BudgetReport("-O3", budget, states[-1].error, kept=kept_count)
    if held_out is not None:
        _check_held_out(runner, states, held_out, budget)
    ctx.log.append(ctx.budget.summary())
    return ctx.budget.kept


class _State:
    """The search after some kept rewrites: the graph and weights (when a back-off may need them), the error on
    the search samples, and the last rewrite's label."""

    def __init__(self, graph, weights, error, label):
        self.graph, self.weights, self.error, self.label = graph, weights, error, label

    @classmethod
    def of(cls, runner: PassRunner, error: float, keep_graph: bool, label: str = "") -> "_State":
        ctx = runner.ctx
        return cls(ctx.graph.copy() if keep_graph else None, dict(ctx.weights) if keep_graph else None, error, label)


def _check_held_out(runner: PassRunner, states: list[_State], held_out: OutputError, budget: float) -> None:
    """The final graph's error on the held-out samples; over the budget, undo the fewest last-kept rewrites
    that bring it within (undoing them all leaves only exact passes, which always fit)."""
    ctx, report = runner.ctx, runner.ctx.budget
    kept = len(states) - 1
    target = budget * SEARCH_SHARE
    final = held_out(ctx.graph, ctx.weights)
    if not final <= target and kept:
        undone, final = fewest_within(kept, lambda k: held_out(states[kept - k].graph, states[kept - k].weights),
                                      target)
        state = states[kept - undone]
        before = graph_cost(ctx.graph)
        ctx.graph, ctx.weights = state.graph, state.weights
        after = graph_cost(ctx.graph)
        # the runs undone keep their --stats rows (they ran, and --verify-each checked them); this row undoes them
        runner.records.append(PassRecord(f"-O3 back-off (undid {undone})", 1, undone, before[0], after[0],
                                         before[1], after[1]))
        runner.done.append(f"-O3 back-off (undid {undone})")
        ctx.graph.meta["approximate"] = True
        ctx.note("-O3", f"undid {', '.join(s.label for s in states[kept - undone + 1:])}: over {target:.3g} "
                        f"({SEARCH_SHARE:.0%} of the budget {budget:g}) on the held-out samples")
        report.undone, report.kept, report.search_error = undone, kept - undone, state.error
    report.held_out_error = final


def _macs_of_rewrite(old: LayerGraph, new: LayerGraph, layer: str) -> int:
    """The MACs of the layers a rewrite of `layer` put in its place (new ones named `layer.0`, `layer.1`, ...):
    the only MACs that differ between the settings tried on it."""
    return sum(layer_macs(new, new.layer(n)) for n in new.g.nodes if n.startswith(layer + ".") and n not in old.g)


def _choose(runner: PassRunner, layer: str, meter: ErrorMeter, budget: float,
            speedup: Speedup | None) -> tuple[tuple[PassStep, float] | None, bool]:
    """(the cheapest setting whose trial (on a copy) keeps the error within budget and is faster, with its error,
    or None; whether any setting measured kept the error within budget)."""
    ctx = runner.ctx
    trials = []
    for setting in settings():
        trial = PassContext(ctx.graph.copy(), dict(ctx.weights))
        if not runner.passes[setting.name].fn(trial, only=layer, **setting.options):
            continue
        trials.append((_macs_of_rewrite(ctx.graph, trial.graph, layer), setting, trial))
    trials.sort(key=lambda t: t[0])
    measured = None
    if getattr(meter, "jobs", 1) > 1:  # measure every trial at once, in parallel (more work, less waiting)
        measured = meter.errors([(trial.graph, trial.weights, layer) for _, _, trial in trials])
    fitted = []

    def error_of(i: int) -> float:
        error = measured[i] if measured is not None else meter.error(trials[i][2].graph, trials[i][2].weights, layer)
        fitted.append(error <= budget)
        return error

    def faster(i: int) -> bool:
        factor = speedup(ctx.graph, trials[i][2].graph, layer)
        if factor < MIN_SPEEDUP:
            ctx.refuse(trials[i][1].name, layer, f"{trials[i][1]} measured {factor:.2f}x under ONNX Runtime")
        return factor >= MIN_SPEEDUP

    chosen = cheapest_within([t[0] for t in trials], [t[1].name for t in trials], error_of, budget,
                             faster if speedup is not None else None)
    if chosen is None:
        return None, any(fitted)
    return (trials[chosen[0]][1], chosen[1]), True
