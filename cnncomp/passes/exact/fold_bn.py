"""fold-bn: fold an inference batch norm into the conv or linear next to it. Exact.

With s = weight / sqrt(running_var + eps) and t = bias - running_mean * s
(per channel, eps as given on the bn):

- producer -> bn (an op with `folds_bn`: conv, deform_conv, linear; conv_transpose below):
  W'[o, ...] = W[o, ...] * s[o],  b'[o] = b[o] * s[o] + t[o]
  (the output-channel axis, axis 0 of the weight, is scaled).
- conv_transpose -> bn: the weight is [in, out/g, *k] and output channel o = g*(out/g) + j
  reads W[i, j] for the input channels i of group g, so W'[i, j, ...] = W[i, j, ...] * s[g(i)*(out/g) + j]
  (axis 1 scaled, per group); the bias as above.
- bn -> consumer (an op with `folds_bn_before`: conv, linear):
  W'[o, i, ...] = W[o, i, ...] * s[c(i)],
  b'[o] = b[o] + sum_{i, k} W[o, i, k] * t[c(i)], with c(i) the input channel that
  group-local index i reads; only when the conv has no padding (a padded border
  would see t instead of 0).

Both only where the bn's channel axis (axis 1) is the layer's `channel_axis`: a
linear on [N, C, F] acts on F, so a bn on C next to it does not fold.

Folding is done in float64 and cast back to float32. A fold is refused, with the
reason logged, when the producer's output has other users (they would see the
folded values). Folded weights outside the float16 range, or that become float16
subnormals, are reported as warnings.
"""

from __future__ import annotations

import numpy as np

from cnncomp.ops.registry import get_op
from cnncomp.passes.manager import register_pass
from cnncomp.passes._rewrite import bypass, only_user, record_alias, set_weight, weight

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 6.103515625e-05


def bn_scale_shift(ctx, bn: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) of a batch norm in float64: bn(x) = x * s + t per channel."""
    gamma = weight(ctx, bn, "weight").astype(np.float64)
    beta = weight(ctx, bn, "bias").astype(np.float64)
    mean = weight(ctx, bn, "running_mean").astype(np.float64)
    var = weight(ctx, bn, "running_var").astype(np.float64)
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


@register_pass("fold-bn", exact=True, level=1)
def fold_bn(ctx) -> int:
    """Fold batch norms into the adjacent conv or linear (before or after it)."""
    graph, count = ctx.graph, 0
    fp16 = {"overflow": {}, "subnormal": {}}
    for bn in [l for l in graph.layers() if l.op == "bn"]:
        if bn.name not in graph:
            continue
        s, t = bn_scale_shift(ctx, bn.name, bn.attrs["eps"])
        count += fold_channel_affine(ctx, "fold-bn", bn, s, t, fp16)
    report_fp16(ctx, "fold-bn", fp16)
    return count


def fold_channel_affine(ctx, pass_name: str, norm, s: np.ndarray, t: np.ndarray, fp16: dict) -> int:
    """Fold `norm`, a layer computing x * s + t per channel (axis 1), into the conv or linear before it,
    else into the one after it; 1 when folded, 0 (the refusal logged) when not. A shift t that is all
    zeros folds into a padded consumer too (a zero border stays zero when scaled)."""
    graph = ctx.graph
    (src,) = graph.inputs_of(norm.name)
    producer_refusal = _producer_refusal(graph, src, norm)
    if producer_refusal is None:
        _fold_into_producer(ctx, src, norm, s, t, fp16)
        return 1
    user = only_user(graph, norm.name)
    consumer = graph.layer(user) if user is not None else None
    if consumer is not None and get_op(consumer.op).folds_bn_before:
        reason = _consumer_refusal(consumer, norm, shifts=bool(np.any(t)))
        if reason is None:
            _fold_into_consumer(ctx, norm, consumer, s, t, fp16)
            return 1
        ctx.refuse(pass_name, norm.name, f"{producer_refusal}; and {reason}")
    else:
        ctx.refuse(pass_name, norm.name, f"{producer_refusal}; and no conv or linear reads only it")
    return 0


def report_fp16(ctx, pass_name: str, fp16: dict) -> None:
    """One warning per kind of float16 trouble, naming the worst layer."""
    for kind, what in (("overflow", "exceed the float16 range (65504)"),
                       ("subnormal", "became float16 subnormals (below 6.1e-05)")):
        counts = fp16[kind]
        if counts:
            worst = max(counts, key=counts.get)
            ctx.fp16_warnings.append(f"{pass_name}: {sum(counts.values())} folded weights in {len(counts)} layers {what}; "
                                f"most in {worst} ({counts[worst]})")


def _fold_into_producer(ctx, layer, bn, s: np.ndarray, t: np.ndarray, fp16: dict) -> None:
    w = weight(ctx, layer.name, "weight").astype(np.float64)
    b = weight(ctx, layer.name, "bias").astype(np.float64) if layer.attrs["bias"] else np.zeros(len(s))
    scale = get_op(layer.op).output_channel_scale(layer.attrs, s, w.shape)
    _store(ctx, layer, w, w * scale, b * s + t, fp16)
    record_alias(ctx.graph, layer.name, bn.name)
    bypass(ctx, bn.name)


def _producer_refusal(graph, src, bn) -> str | None:
    """Why the bn cannot fold into the layer before it, or None."""
    if src.op == "input" or not get_op(src.op).folds_bn:
        return f"follows {src.op}, which has no weight to fold into"
    axis = get_op(src.op).channel_axis(src.attrs, len(src.shape))
    if axis != 1:
        return (f"{src.op} {src.name} computes channels along axis {axis} of its rank-{len(src.shape)} output, "
                f"the {bn.op} works on axis 1")
    if only_user(graph, src.name) != bn.name:
        return f"{src.op} output {src.name} has other users"
    return None


def _consumer_refusal(consumer, bn, shifts: bool = True) -> str | None:
    """Why the bn cannot fold into the layer after it, or None."""
    axis = get_op(consumer.op).channel_axis(consumer.attrs, len(bn.shape))
    if axis != 1:
        return (f"{consumer.op} {consumer.name} reads channels along axis {axis} of its rank-{len(bn.shape)} "
                f"input, the {bn.op} works on axis 1")
    if shifts and any(consumer.attrs.get("pads", ())):
        return f"{consumer.op} {consumer.name} pads its input: the border would see the shift instead of 0"
    return None


def _fold_into_consumer(ctx, bn, layer, s: np.ndarray, t: np.ndarray, fp16: dict) -> None:
    w = weight(ctx, layer.name, "weight").astype(np.float64)
    b = weight(ctx, layer.name, "bias").astype(np.float64) if layer.attrs["bias"] else np.zeros(w.shape[0])
    groups = layer.attrs.get("groups", 1)
    out, per_group = w.shape[0], w.shape[1]
    # c(i) for every (output channel, group-local input index): the channel of x it reads.
    group_of_out = np.arange(out) // (out // groups)
    channel = group_of_out[:, None] * per_group + np.arange(per_group)[None, :]
    extra = (1,) * (w.ndim - 2)
    w_new = w * s[channel].reshape(channel.shape + extra)
    b_new = b + (w * t[channel].reshape(channel.shape + extra)).reshape(out, -1).sum(axis=1)
    _store(ctx, layer, w, w_new, b_new, fp16)
    bypass(ctx, bn.name)


def _store(ctx, layer, w_old: np.ndarray, w: np.ndarray, b: np.ndarray, fp16: dict) -> None:
    overflow = int(np.sum(np.abs(w) > FP16_MAX) + np.sum(np.abs(b) > FP16_MAX))
    became_tiny = int(np.sum((np.abs(w_old) >= FP16_MIN_NORMAL) & (w != 0) & (np.abs(w) < FP16_MIN_NORMAL)))
    if overflow:
        fp16["overflow"][layer.name] = overflow
    if became_tiny:
        fp16["subnormal"][layer.name] = became_tiny
    set_weight(ctx, layer, "weight", w)
    layer.attrs["bias"] = True
    set_weight(ctx, layer, "bias", b)
    layer.args["bias"] = True
