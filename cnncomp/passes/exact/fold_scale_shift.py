"""fold-scale-shift: fold a per-channel `scale` or `shift` into the conv or linear next to it. Exact.

A scale is x * s (s = its weight [C]), a shift x + t (t = its bias [C]) (the op facet
`constant_affine` gives (s, t)): the batch-norm fold with (s, 0) or (1, t), done by fold-bn's
machinery (`fold_channel_affine`):

- producer -> scale/shift (an op with `folds_bn`: conv, deform_conv, linear, conv_transpose):
  W'[o, ...] = W[o, ...] * s[o],  b'[o] = b[o] * s[o] + t[o]
  (for conv_transpose the weight's axis 1 is scaled, per group).
- scale/shift -> consumer (an op with `folds_bn_before`: conv, linear):
  W'[o, i, ...] = W[o, i, ...] * s[c(i)],  b'[o] = b[o] + sum_{i, k} W[o, i, k] * t[c(i)],
  with c(i) the input channel that group-local index i reads. A shift folds forward only into a
  conv without padding (a padded border would see t instead of 0); a scale folds into any (a zero
  border stays zero).

Only where the layer's channel axis is axis 1 (a linear on [N, C, F] acts on F). Done in float64 and
cast to float32. Refused, with the reason logged, when the producer's output has other users.
Importers write layer scale (ConvNeXt's gamma) and the constant Mul/Add after a conv that
PaddlePaddle exports as these layers; at -O1 they cost nothing.
"""

from __future__ import annotations

from cnncomp.ops.registry import get_op
from cnncomp.passes.exact.fold_bn import fold_channel_affine, report_fp16
from cnncomp.passes.manager import register_pass
from cnncomp.passes._rewrite import weight


@register_pass("fold-scale-shift", exact=True, level=1,
               # after fold-bn: conv -> bn -> scale leaves conv -> scale; before merge-pointwise: a scale
               # between two 1x1 convs must be gone for them to merge
               after=("fold-bn",), before=("merge-pointwise",))
def fold_scale_shift(ctx) -> int:
    """Fold per-channel scale and shift layers into the adjacent conv or linear (before or after it)."""
    graph, count = ctx.graph, 0
    fp16 = {"overflow": {}, "subnormal": {}}
    for layer in list(graph.layers()):
        op = get_op(layer.op) if layer.op != "input" else None
        if op is None or layer.name not in graph:
            continue
        affine = op.constant_affine(layer.attrs, {k: weight(ctx, layer.name, k) for k in layer.weights})
        if affine is not None:
            count += fold_channel_affine(ctx, "fold-scale-shift", layer, *affine, fp16)
    report_fp16(ctx, "fold-scale-shift", fp16)
    return count
