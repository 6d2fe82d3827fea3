"""Shared by the approximate rewrites: rank choice, conv-replacement plumbing, savings records."""

from __future__ import annotations

import hashlib
import math

import numpy as np

from cnncomp.ir.graph import Layer
from cnncomp.ops.registry import get_op
from cnncomp.passes._rewrite import record_alias


def rank_for_energy(singular_values: np.ndarray, energy: float) -> int:
    """The smallest rank whose singular values keep `energy` of the squared total."""
    sq = np.asarray(singular_values, dtype=np.float64) ** 2
    total = sq.sum()
    if total == 0:
        return 1
    return int(np.searchsorted(np.cumsum(sq) / total, min(energy, 1.0) - 1e-12) + 1)


def rank_for_ratio(full: int, ratio: float) -> int:
    return max(1, min(full, math.ceil(full * ratio)))


def leading_left_vectors(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `rank` left singular vectors of a matrix, and all its singular values.

    A wide matrix (rows <= columns: a conv weight as [Cout, Cin * k * k]) is decomposed through the
    eigenvectors of its Gram matrix M M^T in float64, which is much faster than a full SVD (512 x 4608:
    4.1 s against 79 s for np.linalg.svd, on a loaded 2-core machine) and agrees with it to 1e-15 on
    the singular values; the leading vectors, the ones kept, are as accurate as the SVD's."""
    vectors, values = decomposed(_decompose, np.asarray(matrix, dtype=np.float64))
    return vectors[:, :rank].copy(), values.copy()  # copies: the kept ones must not change


# -O3 tries several ranks of one weight: its decompositions are kept for the next setting (the last few only)
_DECOMPOSED: dict[tuple, tuple] = {}
_KEEP_DECOMPOSED = 8


def decomposed(decompose, array: np.ndarray) -> tuple:
    """decompose(array), computed once for equal arrays among the last few asked (callers must not write
    into what it returns)."""
    array = np.ascontiguousarray(array)
    key = (decompose.__qualname__, array.shape, array.dtype.str,
           hashlib.blake2b(array.tobytes(), digest_size=16).digest())
    if key not in _DECOMPOSED:
        _DECOMPOSED[key] = decompose(array)
        while len(_DECOMPOSED) > _KEEP_DECOMPOSED:
            _DECOMPOSED.pop(next(iter(_DECOMPOSED)))
    return _DECOMPOSED[key]


def _decompose(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(left singular vectors, singular values) of a matrix, largest first (see leading_left_vectors)."""
    if m.shape[0] > m.shape[1]:
        u, s, _ = np.linalg.svd(m, full_matrices=False)
        return u, s
    values, vectors = np.linalg.eigh(m @ m.T)
    order = np.argsort(values)[::-1]
    return vectors[:, order], np.sqrt(np.clip(values[order], 0.0, None))


def conv_layer(name: str, like: Layer, in_shape: tuple, out: int, kernel: tuple, stride: tuple = 1,
               pads: tuple = 0, dilation: tuple = 1, groups: int = 1, bias: bool = True) -> Layer:
    """A new conv layer made by the conv op (attributes, shape, weights) reading a tensor of `in_shape`.

    It keeps the location and call chain of the layer it replaces."""
    op = get_op("conv")
    args = {"out": out, "k": kernel, "s": stride, "p": pads, "d": dilation, "g": groups, "bias": bias}
    attrs, shape, weights = op.instantiate(args, [tuple(in_shape)])
    return Layer(name, "conv", attrs, shape, like.dtype, like.loc, like.chain, weights, op.spec_args(attrs))


def chain_macs(in_shape: tuple, layers: list[Layer]) -> int:
    """Multiply-accumulates (batch 1) of a chain of new layers, the first reading `in_shape`."""
    total, shape = 0, tuple(in_shape)
    for layer in layers:
        total += get_op(layer.op).macs(layer.attrs, [shape], layer.shape)
        shape = layer.shape
    return total


def relative_error(original: np.ndarray, approx: np.ndarray) -> float:
    """||W - W'|| / ||W|| (Frobenius)."""
    norm = np.linalg.norm(original)
    return float(np.linalg.norm(original - approx) / norm) if norm else 0.0


def replace_with_chain(ctx, old: Layer, new_layers: list[Layer], weights: dict[str, np.ndarray]) -> None:
    """Swap a layer for a chain of new ones (first reads old's input, last feeds old's users)."""
    graph, name = ctx.graph, old.name
    (src,) = graph.input_names(name)
    for suffix in old.weights:
        ctx.weights.pop(f"{name}.{suffix}", None)
    tmp = graph.fresh_name(name + ".__old")  # the new layers are named under the old name
    graph.g = _relabel(graph.g, name, tmp)
    graph.layer(tmp).name = tmp
    graph.outputs = [tmp if o == name else o for o in graph.outputs]
    previous = src
    for layer in new_layers:
        graph.add_layer(layer, [previous])
        previous = layer.name
    graph.redirect_users(tmp, previous)
    graph.remove_layer(tmp)
    record_alias(graph, previous, name)
    for key, value in weights.items():
        ctx.weights[key] = np.ascontiguousarray(value, dtype=np.float32)


def _relabel(g, old: str, new: str):
    import networkx as nx

    return nx.relabel_nodes(g, {old: new}, copy=False)
