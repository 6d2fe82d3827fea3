"""Timing a few layers alone under ONNX Runtime, for -O3 --autotune (the search receives `rewrite_speedup`)."""

from __future__ import annotations

import numpy as np

from cnncomp.ir.graph import Layer, LayerGraph
from cnncomp.ops.dims import concrete, evaluate, symbols_of
from cnncomp.run.sizes import verification_sizes


def median_run_seconds(session, feeds: dict, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of one `session.run(feeds)` over `repeats` runs, after `warmup` runs (any runtime's
    session: ONNX Runtime's, OpenVINO's)."""
    import time

    for _ in range(warmup):
        session.run(feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def extract(graph: LayerGraph, names: list[str]) -> LayerGraph:
    """A graph of just these layers (a chain or a single layer), fed by a new input shaped like their input."""
    members = set(names)
    sub = LayerGraph(f"{graph.name}_part")
    order = [l for l in graph.layers() if l.name in members]
    first = order[0]
    (src,) = graph.inputs_of(first.name)
    sizes = verification_sizes(graph, 1)[-1]  # symbolic sizes: timed at the largest size verify checks

    def at(shape: tuple) -> tuple:
        return (1,) + tuple(evaluate(d, sizes) if symbols_of(d) <= set(sizes) else 1 for d in shape[1:])

    sub.add_layer(Layer("x", "input", {}, at(src.shape), src.dtype))
    for layer in order:
        feeds = ["x" if n not in members else n for n in graph.input_names(layer.name)]
        sub.add_layer(Layer(layer.name, layer.op, concrete(dict(layer.attrs), sizes), at(layer.shape), layer.dtype,
                            layer.loc, layer.chain, dict(layer.weights), dict(layer.args)), feeds)
    sub.outputs = [order[-1].name]
    sub.output_names = ["y"]
    return sub


def time_subgraph(graph: LayerGraph, names: list[str], provider: str = "cpu", repeats: int = 20,
                  convert=None) -> float:
    """Median seconds per run of these layers alone (seeded weights, batch 1), their ONNX model first passed
    through `convert` (a precision conversion: int8 layers are timed as int8) when given."""
    from cnncomp.emit.onnx import emit_onnx
    from cnncomp.run.runtime import open_session
    from cnncomp.ir.weights import init_weights

    sub = extract(graph, names)
    model = emit_onnx(sub, init_weights(sub, 0))
    session = open_session(convert(model) if convert is not None else model, provider, quiet=True)
    x = np.random.default_rng(0).standard_normal(sub.layer("x").shape).astype(np.float32)
    return session.median_seconds({"x": x}, repeats)


def rewrite_speedup(old_graph: LayerGraph, new_graph: LayerGraph, layer: str, provider: str = "cpu",
                    repeats: int = 20, convert=None) -> float:
    """How many times faster the layers that replaced `layer` run than `layer` did, each alone under ONNX Runtime
    (the speedup meter that -O3 --autotune hands to the search); `convert` as in time_subgraph."""
    original = time_subgraph(old_graph, [layer], provider, repeats, convert)
    replaced = [n for n in new_graph.g.nodes if n.startswith(layer + ".") and n not in old_graph.g]
    rewritten = time_subgraph(new_graph, replaced, provider, repeats, convert)
    return original / rewritten if rewritten > 0 else 1.0
