"""drop-identity: remove `dropout` and `identity` layers (identities at inference). Exact.

A layer that is a graph output and reads a graph input directly is kept: ONNX needs
a node between them.
"""

from __future__ import annotations

from cnncomp.passes.manager import register_pass
from cnncomp.passes._rewrite import bypass


@register_pass("drop-identity", exact=True, level=1,
               before=("fold-pad", "fold-bn"))  # a dropout between a conv and its bn or pad would block the fold
def drop_identity(ctx) -> int:
    """Remove dropout and identity layers, wiring their users to their input."""
    graph, count = ctx.graph, 0
    for layer in [l for l in graph.layers() if l.op in ("dropout", "identity")]:
        (src,) = graph.input_names(layer.name)
        if layer.name in graph.outputs and graph.layer(src).op == "input":
            ctx.refuse("drop-identity", layer.name, "it is an output that reads an input directly")
            continue
        bypass(ctx, layer.name)
        count += 1
    return count
