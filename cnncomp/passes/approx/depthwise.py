"""depthwise: split a k x k conv into a depthwise conv and a 1x1 conv. Approximate
(exact when m >= min(Cout, k^2)).

For each input channel i, M_i = W[:, i] reshaped Cout x K (K = prod(k)) has the SVD
U S V^T. Keeping m components, the conv becomes
  depthwise k x k conv, groups Cin, Cin*m outputs: output channel i*m + j (PyTorch's
  order for grouped outputs) has kernel V^T[j] of channel i; the original stride,
  padding and dilation; no bias;
  1x1 conv Cin*m -> Cout: weight[o, i*m + j] = U[o, j] * S[j]; the original bias.
M_i has rank at most min(Cout, K), so m = min(Cout, K) is exact.

`m=` sets the multiplier; `energy=` picks, per layer, the smallest m that keeps that
fraction of squared singular values in every channel. A conv is skipped, with the
reason logged, when the split would not lower its MACs (`always=1` applies it anyway). New layers: NAME.0
(depthwise), NAME.1 (pointwise).
"""

from __future__ import annotations

import math

import numpy as np

from cnncomp.ir.cost import layer_macs
from cnncomp.passes.approx._lowrank import (
    chain_macs, conv_layer, decomposed, rank_for_energy, relative_error, replace_with_chain,
)
from cnncomp.passes.manager import fraction, register_pass
from cnncomp.passes._rewrite import weight
from cnncomp.passes.approx.bottleneck import candidates, refuse_transposed


def split_channels(w: np.ndarray, m: int):
    """(depthwise [Cin*m, 1, k...], pointwise [Cout, Cin*m]) of a conv weight [Cout, Cin, k...]."""
    cout, cin = w.shape[:2]
    kernel = w.shape[2:]
    per_channel = np.moveaxis(w.reshape(cout, cin, -1), 1, 0)  # [Cin, Cout, K]
    # u [Cin, Cout, r], s [Cin, r], vt [Cin, r, K]; -O3 asks for several m of one weight: decomposed once
    u, s, vt = decomposed(_svd, per_channel)
    r = s.shape[1]
    keep = min(m, r)
    depthwise = np.zeros((cin, m) + (math.prod(kernel),))
    pointwise = np.zeros((cout, cin, m))
    depthwise[:, :keep] = vt[:, :keep]
    pointwise[:, :, :keep] = np.moveaxis(u[:, :, :keep] * s[:, None, :keep], 0, 1)
    return depthwise.reshape((cin * m, 1) + kernel), pointwise.reshape(cout, cin * m)


def _svd(per_channel: np.ndarray):
    return np.linalg.svd(per_channel, full_matrices=False)


def reconstruct(depthwise: np.ndarray, pointwise: np.ndarray, cin: int) -> np.ndarray:
    cout = pointwise.shape[0]
    m = depthwise.shape[0] // cin
    dw = depthwise.reshape((cin, m) + depthwise.shape[2:])
    pw = pointwise.reshape(cout, cin, m)
    return np.einsum("oij,ij...->oi...", pw, dw, optimize=True)


def multiplier_for_energy(w: np.ndarray, energy: float) -> int:
    cout, cin = w.shape[:2]
    s = np.linalg.svd(np.moveaxis(w.reshape(cout, cin, -1), 1, 0), compute_uv=False)
    return max(rank_for_energy(row, energy) for row in s)


@register_pass("depthwise", exact=False, options={"m": int, "energy": fraction, "only": str, "always": int})
def depthwise(ctx, m: int | None = None, energy: float | None = None, only: str = "", always: int = 0) -> int:
    """Depthwise-separable (per-input-channel SVD) rewrite of k x k convs."""
    graph, count = ctx.graph, 0
    refuse_transposed(ctx, "depthwise", only)
    for layer in candidates(graph, only):
        name = layer.name  # the rewrite renames the old layer
        w = weight(ctx, name, "weight").astype(np.float64)
        cout, cin = w.shape[:2]
        k = math.prod(layer.attrs["kernel"])
        mult = multiplier_for_energy(w, energy) if energy is not None else (m or 1)
        mult = max(1, min(mult, min(cout, k)))
        in_shape = graph.inputs_of(layer.name)[0].shape
        new_layers = _separable_chain(layer, in_shape, mult)
        after = chain_macs(in_shape, new_layers)
        before = layer_macs(graph, layer)
        if after >= before and not always:
            ctx.refuse("depthwise", layer.name, f"m={mult} would not lower MACs ({after:,} >= {before:,})")
            continue
        dw, pw = split_channels(w, mult)
        _rewrite(ctx, layer, new_layers, dw, pw)
        err = relative_error(w, reconstruct(dw, pw, cin))
        ctx.note("depthwise", f"{name}: m={mult}, MACs {before:,} -> {after:,}, weight error {err:.3g}")
        count += 1
    return count


def _separable_chain(layer, in_shape: tuple, mult: int) -> list:
    """The depthwise (groups Cin, Cin*m outputs) and 1x1 (Cin*m -> Cout) convs that replace a conv."""
    a, name = layer.attrs, layer.name
    cin = a["in_channels"]
    dw = conv_layer(f"{name}.0", layer, in_shape, cin * mult, a["kernel"], a["stride"], a["pads"], a["dilation"],
                    groups=cin, bias=False)
    pw = conv_layer(f"{name}.1", layer, dw.shape, a["out"], 1, bias=a["bias"])
    return [dw, pw]


def _rewrite(ctx, layer, new_layers: list, dw: np.ndarray, pw: np.ndarray) -> None:
    a, name = layer.attrs, layer.name
    ones = (1,) * len(a["kernel"])
    weights = {f"{name}.0.weight": dw, f"{name}.1.weight": pw.reshape(pw.shape + ones)}
    if a["bias"]:
        weights[f"{name}.1.bias"] = weight(ctx, name, "bias")
    replace_with_chain(ctx, layer, new_layers, weights)
