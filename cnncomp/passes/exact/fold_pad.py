"""fold-pad: fold an explicit `pad` layer into the conv or pool that reads it. Exact.

pad(p, value=0) -> conv: the conv's pads grow by p.
pad(p, value=0) -> avgpool with count_pad=true (or with no padding of its own and
no ceil mode, where it becomes count_pad=true): the pool's pads grow by p.
pad(p, value<=-3.4e38) -> maxpool: the pool's pads grow by p (max padding is -inf).
Refused when the pad has other users, or its value does not match what the
consumer pads with.
"""

from __future__ import annotations

from cnncomp.passes.manager import register_pass
from cnncomp.passes._rewrite import bypass, only_user

_NEG_INF = -3.4e38


@register_pass("fold-pad", exact=True, level=2,
               before=("fold-bn",))  # independent of fold-bn; its place since -O2 had a list (the same output)
def fold_pad(ctx) -> int:
    """Fold explicit padding into the next conv or pool."""
    graph, count = ctx.graph, 0
    for pad in [l for l in graph.layers() if l.op == "pad"]:
        user = only_user(graph, pad.name)
        if user is None:
            ctx.refuse("fold-pad", pad.name, "its output has several users")
            continue
        consumer = graph.layer(user)
        reason = _refusal(pad, consumer)
        if reason:
            ctx.refuse("fold-pad", pad.name, reason)
            continue
        extra = pad.attrs["pads"]
        consumer.attrs["pads"] = tuple(a + b for a, b in zip(consumer.attrs["pads"], extra))
        if consumer.op == "avgpool":
            consumer.attrs["count_pad"] = True
        bypass(ctx, pad.name)
        count += 1
    return count


def _refusal(pad, consumer) -> str | None:
    value = pad.attrs["value"]
    mode = pad.attrs.get("mode", "constant")
    if mode != "constant":
        return f"pads in mode \"{mode}\"; a {consumer.op} pads with a constant"
    if consumer.op in ("avgpool", "maxpool"):
        rank = len(consumer.attrs["kernel"])
        pads = [a + b for a, b in zip(consumer.attrs["pads"], pad.attrs["pads"])]
        for i, k in enumerate(consumer.attrs["kernel"]):
            if max(pads[i], pads[i + rank]) >= k:
                return f"the pool's padding would reach its kernel size {k}"
    if consumer.op in ("conv", "deform_conv"):
        return None if value == 0 else f"pads with {value}, the conv with 0"
    if consumer.op == "avgpool":
        if value != 0:
            return f"pads with {value}, the pool with 0"
        if consumer.attrs["ceil"]:
            return "the pool uses ceil mode"
        if not consumer.attrs["count_pad"] and any(consumer.attrs["pads"]):
            return "the pool pads without counting the padding"
        return None
    if consumer.op == "maxpool":
        return None if value <= _NEG_INF else f"pads with {value}, max pooling with -inf"
    return f"read by {consumer.op}, not a conv or pool"
