"""merge-pointwise: merge a 1x1 conv (or a linear) into the conv (or linear) before it. Exact.

With nothing nonlinear between them, conv1 (W1, b1) then a 1x1 conv (W2, b2) is one conv:
W[o, i, k...] = sum_m W2[o, m] W1[m, i, k...],  b = W2 b1 + b2,
keeping conv1's kernel, stride, padding and dilation. The same for linear -> linear.
Only when the first has groups=1, its output has no other user, the second is a
plain 1x1 conv (stride 1, no padding, groups 1), and the merged layer does not
have more MACs than the two (a wide middle makes the merge cheaper; a narrow
bottleneck would make it dearer, so it is skipped with that reason).
"""

from __future__ import annotations

import numpy as np

from cnncomp.ir.cost import layer_macs
from cnncomp.passes.manager import register_pass
from cnncomp.passes._rewrite import bypass, is_pointwise_conv, only_user, record_alias, set_weight, weight


@register_pass("merge-pointwise", exact=True, level=2,
               after=("fold-bn",))  # a bn between two convs is folded first, so they become adjacent
def merge_pointwise(ctx) -> int:
    """Merge consecutive linear maps: conv -> 1x1 conv, linear -> linear."""
    graph, count = ctx.graph, 0
    for second in [l for l in graph.layers() if l.op in ("conv", "linear")]:
        if second.name not in graph:
            continue
        if second.op == "conv" and not is_pointwise_conv(second):
            continue
        (first,) = graph.inputs_of(second.name)
        if first.op != second.op or (first.op == "conv" and first.attrs["groups"] != 1):
            continue
        if only_user(graph, first.name) != second.name:
            ctx.refuse("merge-pointwise", second.name, f"{first.name} has other users")
            continue
        mid, cin = first.attrs["out"], first.attrs.get("in_channels", first.attrs.get("in_features"))
        merged_macs = layer_macs(graph, first) // mid * second.attrs["out"]
        if merged_macs > layer_macs(graph, first) + layer_macs(graph, second):
            ctx.refuse("merge-pointwise", second.name, f"merging would raise MACs (middle width {mid} < "
                                                       f"{cin} in, {second.attrs['out']} out)")
            continue
        _merge(ctx, first, second)
        count += 1
    return count


def _merge(ctx, first, second) -> None:
    w1 = weight(ctx, first.name, "weight").astype(np.float64)
    w2 = weight(ctx, second.name, "weight").astype(np.float64).reshape(second.attrs["out"], -1)
    b1 = weight(ctx, first.name, "bias").astype(np.float64) if first.attrs["bias"] else np.zeros(w1.shape[0])
    b2 = weight(ctx, second.name, "bias").astype(np.float64) if second.attrs["bias"] else np.zeros(w2.shape[0])
    merged = (w2 @ w1.reshape(w1.shape[0], -1)).reshape((w2.shape[0],) + w1.shape[1:])
    first.attrs["out"] = second.attrs["out"]
    first.args["out"] = second.attrs["out"]
    first.attrs["bias"] = first.args["bias"] = True
    first.shape = second.shape
    set_weight(ctx, first, "weight", merged)
    set_weight(ctx, first, "bias", w2 @ b1 + b2)
    record_alias(ctx.graph, first.name, second.name)
    bypass(ctx, second.name)
