"""-O3: the approximate rewrites, chosen layer by layer under an end-to-end error budget.

Candidates are the convs that `bottleneck` or `depthwise` can rewrite, largest MACs
first. For each, the settings are tried from the cheapest (fewest MACs) up; a
setting is kept when the network's relative output error, ||y - y_ref|| / ||y_ref||
over every output with all rewrites kept so far, stays within `max_error` on
calibration inputs (or seeded ones) (the reference is the unoptimized graph in float64). With `autotune`, a
setting is kept only where ONNX Runtime also measures the rewritten layer faster
than the original on this machine (memory-bound depthwise convs often are not).
"""

from __future__ import annotations

import numpy as np

from cnncomp.ir.cost import layer_macs
from cnncomp.passes.manager import PassContext, PassRecord, PassStep, all_passes, graph_cost

RATIOS = (0.125, 0.25, 0.5, 0.75)
MULTIPLIERS = (1, 2, 4)
DEFAULT_MAX_ERROR = 0.01


def _settings():
    for ratio in RATIOS:
        yield PassStep("bottleneck", {"ratio": ratio})
    for m in MULTIPLIERS:
        yield PassStep("depthwise", {"m": m})


def apply_within_budget(ctx: PassContext, ref_graph, ref_weights, max_error: float | None = None,
                        autotune: bool = False, seed: int = 0, provider: str = "cpu",
                        calibration: dict | None = None) -> list[PassRecord]:
    """Apply bottleneck/depthwise rewrites to the layers where they fit the error budget.

    The error is measured on `calibration` inputs when given (real data says more than noise),
    else on seeded uniform inputs in [-1, 1]."""
    import torch

    from cnncomp.inputs import bind_inputs
    from cnncomp.run.reference import run_reference
    from cnncomp.verification.compare import relative_output_error
    from cnncomp.verification.harness import make_inputs

    budget = DEFAULT_MAX_ERROR if max_error is None else max_error
    feeds = bind_inputs(calibration, ref_graph.inputs, "--calibration") if calibration is not None else \
        make_inputs(ref_graph, seed, batch=2)
    reference = run_reference(ref_graph, ref_weights, feeds, dtype=torch.float64)
    passes = all_passes()
    records: list[PassRecord] = []
    from cnncomp.passes.approx.bottleneck import candidates

    from cnncomp.progress import progress

    layers = sorted(candidates(ctx.graph), key=lambda l: -layer_macs(ctx.graph, l))
    for layer in progress(layers, label="-O3 rewrites"):
        if not all(np.isfinite(ctx.weights[f"{layer.name}.{suffix}"]).all() for suffix in layer.weights):
            ctx.refuse("-O3", layer.name, "its weights are not finite (NaN or Inf): no decomposition of them")
            continue
        before = graph_cost(ctx.graph)
        trials = []
        for setting in _settings():
            trial = PassContext(ctx.graph.copy(), dict(ctx.weights))
            if not passes[setting.name].fn(trial, only=layer.name, **setting.options):
                continue
            trials.append((graph_cost(trial.graph)[1], setting, trial))
        kept = None
        for macs, setting, trial in sorted(trials, key=lambda t: t[0]):
            error = relative_output_error(run_reference(trial.graph, trial.weights, feeds), reference)
            if not error <= budget:  # also refuses a NaN error (NaN weights): it measures nothing
                continue
            if autotune:
                speedup = measure_speedup(ctx.graph, trial.graph, layer.name, provider)
                if speedup < 1.05:
                    ctx.refuse(setting.name, layer.name, f"{setting} measured {speedup:.2f}x under ONNX Runtime")
                    continue
            kept = (setting, trial, error)
            break
        if kept is None:
            ctx.refuse("-O3", layer.name, f"no rewrite keeps the output error within {budget:g}")
            continue
        setting, trial, error = kept
        ctx.graph, ctx.weights = trial.graph, trial.weights
        ctx.log += [line for line in trial.log if line.startswith(setting.name) and layer.name in line]
        ctx.note(setting.name, f"{layer.name}: kept {setting}, network relative error {error:.3g} "
                               f"(budget {budget:g})")
        after = graph_cost(ctx.graph)
        records.append(PassRecord(f"{setting.name}({', '.join(f'{k}={v}' for k, v in setting.options.items())}, "
                                  f"only={layer.name})", 1, 1, before[0], after[0], before[1], after[1]))
        ctx.graph.meta.setdefault("passes", []).append(f"{setting}@{layer.name}")
    ctx.graph.meta["approximate"] = True
    return records


def measure_speedup(old_graph, new_graph, layer: str, provider: str = "cpu", repeats: int = 20) -> float:
    """Time one conv against its rewrite, each alone in a small ONNX model, under ONNX Runtime."""
    from cnncomp.run.timing import time_subgraph

    original = time_subgraph(old_graph, [layer], provider, repeats)
    replaced = [n for n in new_graph.g.nodes if n.startswith(layer + ".") and n not in old_graph.g]
    rewritten = time_subgraph(new_graph, replaced, provider, repeats)
    return original / rewritten if rewritten > 0 else 1.0
