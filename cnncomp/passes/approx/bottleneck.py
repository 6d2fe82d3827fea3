"""bottleneck: Tucker-2 decomposition of a k x k conv. Approximate (exact at full rank).

A conv (k > 1 in some dim, groups 1) with weight W [Cout, Cin, k...] becomes
  1x1 conv Cin -> r1 (weight U_in^T, no bias)
  k x k conv r1 -> r2 (the core; the original stride, padding and dilation)
  1x1 conv r2 -> Cout (weight U_out, the original bias)
U_out: the r2 leading left singular vectors of the mode-0 unfolding of W
(Cout x Cin*k^2); U_in: the r1 leading left singular vectors of the mode-1
unfolding (Cin x Cout*k^2); core = W x_0 U_out^T x_1 U_in^T. Optional HOOI
iterations refine U_in and U_out alternately. At r1 = Cin and r2 = Cout the U are
square orthogonal matrices and the rewrite is exact.

Ranks: `ratio=` (fraction of channels kept on both sides), `energy=` (fraction of
squared singular values kept on each unfolding) or `ranks=r1:r2`. A conv is
skipped, with the reason logged, when the rewrite would not lower its MACs
(`always=1` applies it anyway, to study the rewrite).
The new layers are named NAME.0, NAME.1, NAME.2, as if the conv had become an
nn.Sequential.
"""

from __future__ import annotations

import numpy as np

from cnncomp.ir.cost import layer_macs
from cnncomp.passes.approx._lowrank import (
    chain_macs, conv_layer, leading_left_vectors, rank_for_energy, rank_for_ratio, relative_error, replace_with_chain,
)
from cnncomp.passes.manager import fraction, register_pass
from cnncomp.passes._rewrite import weight


def tucker2(w: np.ndarray, r1: int, r2: int, hooi: int = 0):
    """(U_in [Cin, r1], core [r2, r1, k...], U_out [Cout, r2]) of a conv weight."""
    cout, cin = w.shape[:2]
    u_out, _ = leading_left_vectors(w.reshape(cout, -1), r2)
    u_in, _ = leading_left_vectors(np.moveaxis(w, 1, 0).reshape(cin, -1), r1)
    for _ in range(hooi):
        partial = np.einsum("oi...,or->ri...", w, u_out, optimize=True)
        u_in, _ = leading_left_vectors(np.moveaxis(partial, 1, 0).reshape(cin, -1), r1)
        partial = np.einsum("oi...,ir->or...", w, u_in, optimize=True)
        u_out, _ = leading_left_vectors(partial.reshape(cout, -1), r2)
    core = np.einsum("oi...,or,is->rs...", w, u_out, u_in, optimize=True)
    return u_in, core, u_out


def reconstruct(u_in: np.ndarray, core: np.ndarray, u_out: np.ndarray) -> np.ndarray:
    return np.einsum("rs...,or,is->oi...", core, u_out, u_in, optimize=True)


def choose_ranks(w: np.ndarray, ratio: float | None, energy: float | None, ranks: tuple) -> tuple[int, int]:
    cout, cin = w.shape[:2]
    # the ranks of the mode-1 and mode-0 unfoldings bound what the factors can have
    cap_in, cap_out = min(cin, w.size // cin), min(cout, w.size // cout)
    r1, r2 = _requested_ranks(w, ratio, energy, ranks)
    return min(r1, cap_in), min(r2, cap_out)


def _requested_ranks(w: np.ndarray, ratio: float | None, energy: float | None, ranks: tuple) -> tuple[int, int]:
    cout, cin = w.shape[:2]
    if ranks:
        return min(ranks[0], cin), min(ranks[1] if len(ranks) > 1 else ranks[0], cout)
    if energy is not None:
        s_out = np.linalg.svd(w.reshape(cout, -1), compute_uv=False)
        s_in = np.linalg.svd(np.moveaxis(w, 1, 0).reshape(cin, -1), compute_uv=False)
        return rank_for_energy(s_in, energy), rank_for_energy(s_out, energy)
    ratio = 0.5 if ratio is None else ratio
    return rank_for_ratio(cin, ratio), rank_for_ratio(cout, ratio)


def candidates(graph, only: str = "") -> list:
    """The convs the rewrites apply to (some kernel dim > 1, groups 1), or those of them named in `only` (a:b)."""
    selected = set(only.split(":")) if only else None
    return [l for l in graph.layers() if l.op == "conv" and l.attrs["groups"] == 1 and max(l.attrs["kernel"]) > 1
            and (selected is None or l.name in selected)]


def refuse_transposed(ctx, pass_name: str, only: str = "") -> None:
    """Log why the conv rewrites leave conv_transpose layers alone."""
    selected = set(only.split(":")) if only else None
    for layer in ctx.graph.layers():
        if layer.op == "conv_transpose" and (selected is None or layer.name in selected):
            ctx.refuse(pass_name, layer.name, "conv_transpose is not rewritten: the factorization is written for "
                                              "conv weights [out, in, *k], and its output would need a transposed "
                                              "conv chain")


@register_pass("bottleneck", exact=False, options={"ratio": fraction, "energy": fraction, "ranks": tuple, "hooi": int,
                                                    "only": str, "always": int})
def bottleneck(ctx, ratio: float | None = None, energy: float | None = None, ranks: tuple = (), hooi: int = 0,
               only: str = "", always: int = 0) -> int:
    """Tucker-2 (1x1 -> k x k core -> 1x1) rewrite of k x k convs."""
    graph, count = ctx.graph, 0
    refuse_transposed(ctx, "bottleneck", only)
    for layer in candidates(graph, only):
        name = layer.name  # the rewrite renames the old layer
        w = weight(ctx, name, "weight").astype(np.float64)
        r1, r2 = choose_ranks(w, ratio, energy, ranks)
        in_shape = graph.inputs_of(layer.name)[0].shape
        new_layers = _tucker_chain(layer, in_shape, r1, r2)
        after = chain_macs(in_shape, new_layers)
        before = layer_macs(graph, layer)
        if after >= before and not always:
            ctx.refuse("bottleneck", layer.name, f"ranks ({r1}, {r2}) would not lower MACs ({after:,} >= {before:,})")
            continue
        u_in, core, u_out = tucker2(w, r1, r2, hooi)
        _rewrite(ctx, layer, new_layers, u_in, core, u_out)
        err = relative_error(w, reconstruct(u_in, core, u_out))
        ctx.note("bottleneck", f"{name}: ranks ({r1}, {r2}), MACs {before:,} -> {after:,}, "
                               f"weight error {err:.3g}")
        count += 1
    return count


def _tucker_chain(layer, in_shape: tuple, r1: int, r2: int) -> list:
    """The 1x1 (Cin -> r1), core (r1 -> r2) and 1x1 (r2 -> Cout) convs that replace a conv."""
    a, name = layer.attrs, layer.name
    reduce_ = conv_layer(f"{name}.0", layer, in_shape, r1, 1, bias=False)
    core = conv_layer(f"{name}.1", layer, reduce_.shape, r2, a["kernel"], a["stride"], a["pads"], a["dilation"],
                      bias=False)
    expand = conv_layer(f"{name}.2", layer, core.shape, a["out"], 1, bias=a["bias"])
    return [reduce_, core, expand]


def _rewrite(ctx, layer, new_layers: list, u_in, core, u_out) -> None:
    a, name = layer.attrs, layer.name
    ones = (1,) * len(a["kernel"])
    r1, r2 = u_in.shape[1], u_out.shape[1]
    weights = {f"{name}.0.weight": u_in.T.reshape((r1, a["in_channels"]) + ones),
               f"{name}.1.weight": core,
               f"{name}.2.weight": u_out.reshape((a["out"], r2) + ones)}
    if a["bias"]:
        weights[f"{name}.2.bias"] = weight(ctx, name, "bias")
    replace_with_chain(ctx, layer, new_layers, weights)
