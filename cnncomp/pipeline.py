"""The main job, as functions the API and the command line share: load a spec and
its weights, run the passes, emit a model, verify it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnncomp.errors import CnnError
from cnncomp.ir.graph import LayerGraph


@dataclass
class Compiled:
    """A spec after the passes: the reference graph and weights, the optimized ones, and what the passes did."""

    ref_graph: LayerGraph
    ref_weights: dict[str, np.ndarray]
    graph: LayerGraph
    weights: dict[str, np.ndarray]
    records: list = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fp16_warnings: list[str] = field(default_factory=list)


def load_graph(spec, defines: dict | None = None) -> LayerGraph:
    """A LayerGraph from a path to a .cnn file (or an already loaded graph)."""
    if isinstance(spec, LayerGraph):
        return spec
    from cnncomp.frontend.cnn.loader import load_spec

    return load_spec(spec, defines)


def load_weights_for(graph: LayerGraph, weights=None, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights from a file (safetensors or a PyTorch checkpoint), a dict, or seeded initialization."""
    from cnncomp.ir.weights import check_weights, init_weights, load_weights

    if weights is None:
        return init_weights(graph, seed)
    if isinstance(weights, (str, Path)):
        return load_weights(weights, graph)
    return check_weights(dict(weights), graph, "the weights dict")


def resolve_steps(opt_level: int = 1, passes=None):
    """The pass steps for -O<level> or an explicit --passes list (a string or a list of strings)."""
    from cnncomp.passes import level_pipeline, parse_pass_list

    if passes is not None:
        text = passes if isinstance(passes, str) else ",".join(passes)
        return parse_pass_list(text)
    if not 0 <= opt_level <= 3:
        raise CnnError(f"optimization level must be 0 to 3, got {opt_level}")
    return level_pipeline(min(opt_level, 2))


def optimize(spec, defines=None, weights=None, seed: int = 0, opt_level: int = 1, passes=None,
             lint: bool = False, after_each=None, max_error: float | None = None, autotune: bool = False,
             provider: str = "cpu", calibration: dict | None = None) -> Compiled:
    """Load a spec and run its passes: -O<level>, or an explicit list."""
    from cnncomp.passes import PassContext, run_pipeline

    ref_graph = load_graph(spec, defines)
    ref_weights = load_weights_for(ref_graph, weights, seed)
    ctx = PassContext(ref_graph.copy(), dict(ref_weights))
    ctx.graph.meta["passes"] = []
    steps = resolve_steps(opt_level, passes)
    records = run_pipeline(ctx, steps, lint=lint, after_each=after_each)
    if opt_level >= 3 and passes is None:
        from cnncomp.passes.search import apply_within_budget

        records += apply_within_budget(ctx, ref_graph, ref_weights, max_error=max_error, autotune=autotune,
                                       seed=seed, provider=provider, calibration=calibration)
    return Compiled(ref_graph, ref_weights, ctx.graph, ctx.weights, records, ctx.log, ctx.warnings,
                    ctx.fp16_warnings)


def emit_model(compiled: Compiled, opset: int = 17, notices: list[str] | None = None):
    """The optimized graph as an ONNX ModelProto (checked with the full checker)."""
    from cnncomp.emit.onnx import check_onnx, emit_onnx

    model = emit_onnx(compiled.graph, compiled.weights, opset=opset, notices=notices)
    check_onnx(model)
    return model


def quantize_model(compiled: Compiled, model, calibration=None, preprocess: str | None = None,
                   method: str | None = None, max_error: float | None = None, sensitivity: bool = False,
                   seed: int = 0, activations: str = "uint8"):
    """The emitted float32 model as QDQ int8 within `max_error` (see cnncomp.precision.int8): (model, Int8Report)."""
    from cnncomp.precision.int8 import DEFAULT_METHOD, quantize_int8

    return quantize_int8(model, compiled.graph, compiled.ref_graph, compiled.ref_weights, calibration, preprocess,
                         method or DEFAULT_METHOD, max_error, sensitivity, seed, activations)
