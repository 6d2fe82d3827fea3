"""equalize: cross-layer equalization of consecutive convs (Nagel et al. 2019, data-free quantization). Exact.

For conv1 -> f -> conv2, where f is positively homogeneous (f(x / s) = f(x) / s for s > 0: relu,
leaky_relu, identity, or nothing), with r1[c] = max |W1[c, ...]| (conv1's output channel c) and
r2[c] = max |W2[o, i, ...]| over the weights that read channel c:

    s[c] = sqrt(r1[c] / r2[c])
    W1'[c, ...] = W1[c, ...] / s[c],   b1'[c] = b1[c] / s[c]
    W2'[o, i, ...] = W2[o, i, ...] * s[c(i)]    (c(i): the channel that group-local index i reads)

so that both ranges become sqrt(r1 * r2): per-tensor and per-channel int8 scales then waste
fewer levels on channels far smaller than their neighbours (depthwise convs, above all). The
network computes the same function (conv2's zero padding scales to zero too). Scales are
computed in float64; a chain conv1 -> conv2 -> conv3 is swept until the scales settle
(at most MAX_SWEEPS times).

Refused, with the reason logged: a conv1 output or activation read by anything else (it would
see the rescaled channels), an activation that is not positively homogeneous (relu6 clips at 6:
relu6(x / s) != relu6(x) / s), a channel whose weights are all zero on either side.
Run it after fold-bn, which moves batch norms into the convs (`--passes fold-bn,equalize`);
`--precision int8` runs it before quantizing.
"""

from __future__ import annotations

import numpy as np

from cnncomp.passes._rewrite import only_user, set_weight, weight
from cnncomp.passes.manager import register_pass

# f(x / s) = f(x) / s for every s > 0 (a registry facet would say this per op; see the report)
POSITIVELY_HOMOGENEOUS = ("relu", "leaky_relu", "identity", "dropout")
MAX_SWEEPS = 20
SETTLED = 1e-3  # a pair counts as changed when some channel's scale moves by more than this


def pairs(ctx) -> list[tuple[str, str | None, str]]:
    """(conv1, activation or None, conv2) for every conv pair that can be equalized; refusals are logged."""
    graph, found = ctx.graph, []
    for layer in list(graph.layers()):
        if layer.op != "conv":
            continue
        user = only_user(graph, layer.name)
        if user is None:
            if graph.users(layer.name):
                ctx.refuse("equalize", layer.name, "its output has several users")
            continue
        act = None
        if graph.layer(user).op != "conv":
            act, user = user, only_user(graph, user)
            if graph.layer(act).op not in POSITIVELY_HOMOGENEOUS:
                if graph.layer(act).op in ("relu6", "clip", "hardtanh"):
                    ctx.refuse("equalize", layer.name, f"{graph.layer(act).op} {act} is not positively homogeneous "
                                                       "(it clips at a fixed bound)")
                continue
            if user is None or graph.layer(user).op != "conv":
                continue
        found.append((layer.name, act, user))
    return found


def _channel_map(w2: np.ndarray, groups: int) -> np.ndarray:
    """c(o, i): the input channel that weight W2[o, i] reads."""
    out, per_group = w2.shape[0], w2.shape[1]
    group_of_out = np.arange(out) // (out // groups)
    return group_of_out[:, None] * per_group + np.arange(per_group)[None, :]


def equalize_pair(ctx, conv1, conv2) -> float:
    """Rescale one pair in place; return the largest |log s| (0 when already equal)."""
    w1 = weight(ctx, conv1.name, "weight").astype(np.float64)
    w2 = weight(ctx, conv2.name, "weight").astype(np.float64)
    channels = w1.shape[0]
    channel = _channel_map(w2, conv2.attrs.get("groups", 1))
    r1 = np.abs(w1).reshape(channels, -1).max(axis=1)
    per_weight = np.abs(w2).reshape(w2.shape[0], w2.shape[1], -1).max(axis=2)
    r2 = np.zeros(channels)
    np.maximum.at(r2, channel.ravel(), per_weight.ravel())
    usable = (r1 > 0) & (r2 > 0)
    s = np.ones(channels)
    s[usable] = np.sqrt(r1[usable] / r2[usable])
    if np.all(np.abs(np.log(s)) <= SETTLED):
        return 0.0
    view = (-1,) + (1,) * (w1.ndim - 1)
    set_weight(ctx, conv1, "weight", w1 / s.reshape(view))
    if conv1.attrs["bias"]:
        set_weight(ctx, conv1, "bias", weight(ctx, conv1.name, "bias").astype(np.float64) / s)
    set_weight(ctx, conv2, "weight", w2 * s[channel].reshape(channel.shape + (1,) * (w2.ndim - 2)))
    return float(np.abs(np.log(s)).max())


@register_pass("equalize", exact=True, level=0)
def equalize(ctx) -> int:
    """Cross-layer equalization of conv -> relu/identity -> conv pairs (for int8)."""
    found = pairs(ctx)
    changed: set[tuple[str, str]] = set()
    for _ in range(MAX_SWEEPS):
        moved = False
        for first, _act, second in found:
            if equalize_pair(ctx, ctx.graph.layer(first), ctx.graph.layer(second)) > SETTLED:
                changed.add((first, second))
                moved = True
        if not moved:
            break
    for first, act, second in found:
        if (first, second) in changed:
            ctx.note("equalize", f"{first} -> {act + ' -> ' if act else ''}{second}: channel ranges equalized")
    return len(changed)
