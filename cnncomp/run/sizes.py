"""The sizes a model with symbolic sizes is run at when no input says: verification, timing and seeded
calibration pick them here, from the spec's constraints (graph.meta["symbols"]) and the layers' sizes."""

from __future__ import annotations

from cnncomp.errors import CnnError
from cnncomp.ir.graph import LayerGraph
from cnncomp.ops.dims import evaluate, symbols_of

MIN_CHECK_SIZE = 8  # a spatial symbol is checked at 8 or more (a 1x1 image would test little)


def verification_sizes(graph: LayerGraph, batch: int = 2, count: int = 3) -> list[dict[str, int]]:
    """Sizes of the symbols to verify a dynamic model at: the smallest that every layer allows (each output
    size at least 1) and the constraints meet, then larger, not square ones. Batch symbols take `batch`."""
    rules = graph.meta.get("symbols", {})
    spatial = spatial_symbols(graph)
    fixed = {s: batch for s in batch_symbols(graph) if s not in spatial}
    if not spatial:
        return [fixed]
    start, step = {}, {}
    for s in spatial:  # from the least size the rule allows, at least 8, in steps of at least 8
        rule = rules.get(s, {})
        modulus, rest, least = rule.get("multiple_of", 1), rule.get("remainder", 0), rule.get("min", 1)
        least = max(least, MIN_CHECK_SIZE)
        start[s] = rest + modulus * max(0, -(-(least - rest) // modulus))
        step[s] = modulus * -(-MIN_CHECK_SIZE // modulus)
    shapes = {tuple(layer.shape) for layer in graph.layers()}
    sized = {d for shape in shapes for d in shape if not isinstance(d, int)}

    def at(t: int, extra: int = 0) -> dict[str, int]:
        sizes = dict(fixed)
        for i, s in enumerate(spatial):
            sizes[s] = start[s] + step[s] * (t + (extra * i if i else 0))
        return sizes

    def valid(sizes: dict[str, int]) -> bool:
        return all(evaluate(d, sizes) >= 1 for d in sized if symbols_of(d) <= set(sizes))

    smallest = next((t for t in range(512) if valid(at(t))), None)
    if smallest is None:
        raise CnnError("found no size of " + ", ".join(spatial) + " at which every layer has a positive size")
    grow = max(1, smallest)
    candidates = [at(smallest), at(smallest + grow, 1), at(2 * smallest + 2 * grow, 1)]
    return [c for c in candidates if valid(c)][:count]


def spatial_symbols(graph: LayerGraph) -> list[str]:
    """The symbols of the inputs' dims after the batch (H, W)."""
    out: list[str] = []
    for name in graph.inputs:
        for d in graph.layer(name).shape[1:]:
            out += [s for s in sorted(symbols_of(d)) if s not in out]
    return out


def batch_symbols(graph: LayerGraph) -> list[str]:
    out: list[str] = []
    for name in graph.inputs:
        d = graph.layer(name).shape[0]
        out += [s for s in sorted(symbols_of(d)) if s not in out]
    return out
