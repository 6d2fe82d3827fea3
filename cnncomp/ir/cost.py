"""What a graph costs: learnable parameters and multiply-accumulates (batch 1), per layer and in total."""

from __future__ import annotations

import math

from cnncomp.ir.graph import LayerGraph
from cnncomp.ops import dims
from cnncomp.ops.registry import get_op


def layer_params(layer) -> int:
    """Learnable parameters of a layer (batch-norm running statistics are buffers, not parameters)."""
    return sum(math.prod(w.shape) for w in layer.weights.values() if w.learnable)


def layer_macs(graph: LayerGraph, layer):
    """Multiply-accumulates of a layer for batch 1: an int, or an expression of the spatial
    symbols (a SymDim) when its sizes are symbolic."""
    if layer.op == "input":
        return 0
    shapes = [t.shape for t in graph.inputs_of(layer.name)]
    return get_op(layer.op).macs(layer.attrs, shapes, layer.shape)


def graph_cost(graph: LayerGraph) -> tuple:
    """(params, MACs) of a graph, MACs for batch 1 (an expression when sizes are symbolic)."""
    layers = list(graph.layers())
    return sum(layer_params(l) for l in layers), dims.add(*(layer_macs(graph, l) for l in layers))
