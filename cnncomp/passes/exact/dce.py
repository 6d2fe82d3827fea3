"""dce: dead-code elimination. Removes layers from which no output can be reached. Exact."""

from __future__ import annotations

import networkx as nx

from cnncomp.passes.manager import register_pass
from cnncomp.passes._rewrite import drop_weights


@register_pass("dce", exact=True, level=1,
               after=("drop-identity", "fold-pad", "fold-bn", "fold-scale-shift", "merge-pointwise"))  # removes what they leave dead
def dce(ctx) -> int:
    """Remove the layers that no output depends on (graph inputs stay)."""
    graph = ctx.graph
    live = set(graph.outputs)
    for out in graph.outputs:
        live |= nx.ancestors(graph.g, out)
    dead = [l for l in graph.layers() if l.name not in live and l.op != "input"]
    for layer in reversed(dead):
        drop_weights(ctx, layer)
        graph.g.remove_node(layer.name)
    return len(dead)
