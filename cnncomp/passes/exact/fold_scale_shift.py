"""fold-scale-shift: fold a per-channel `scale` or `shift` into the conv or linear next to it. Exact.

A scale is x * s (s = its weight [C]), a shift x + t (t = its bias [C]): the batch-norm fold with
(s, 0) or (1, t), done by fold-bn's machinery (`fold_channel_affine`):

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

import numpy as np

from cnncomp.passes.exact.fold_bn import fold_channel_affine, report_fp16
from cnncomp.passes.manager import register_pass
from cnncomp.passes._rewrite import weight


def scale_and_shift(ctx, layer) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) in float64 of a scale or shift layer: it computes x * s + t per channel."""
    if layer.op == "scale":
        s = weight(ctx, layer.name, "weight").astype(np.float64)
        return s, np.zeros_like(s)
    t = weight(ctx, layer.name, "bias").astype(np.float64)
    return np.ones_like(t), t


@register_pass("fold-scale-shift", exact=True, level=1)
def fold_scale_shift(ctx) -> int:
    """Fold per-channel scale and shift layers into the adjacent conv or linear (before or after it)."""
    graph, count = ctx.graph, 0
    fp16 = {"overflow": {}, "subnormal": {}}
    for layer in [l for l in graph.layers() if l.op in ("scale", "shift")]:
        if layer.name not in graph:
            continue
        s, t = scale_and_shift(ctx, layer)
        count += fold_channel_affine(ctx, "fold-scale-shift", layer, s, t, fp16)
    report_fp16(ctx, "fold-scale-shift", fp16)
    return count
