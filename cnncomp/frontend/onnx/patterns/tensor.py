"""Reductions and rearrangements: ReduceMean, ReduceSum, Split, Transpose, LayerNormalization, Expand.

    ReduceMean over every spatial axis, keepdims  -> gap
    ReduceMean / ReduceSum over other axes        -> mean / sum(axes, keepdims)
    Split                                         -> split(sizes, axis, part): a layer per part read
    Transpose keeping the batch first             -> permute(dims)
    LayerNormalization                            -> layer_norm(axes, eps)
    Expand into a broadcasting merge              -> nothing: the merge broadcasts (see `through_expand`)
"""

from __future__ import annotations

import numpy as np

from cnncomp.frontend.onnx.model import OnnxModel, attrs_of
from cnncomp.frontend.onnx.patterns.base import (
    Match, Unsupported, const_input, matcher, require_op, round_float, unknown_shape,
)
from cnncomp.ops.registry import compact


def _axes(m: OnnxModel, node, rank: int) -> tuple | None:
    """A reduction's axes, from its attribute (before opset 18; ReduceSum before 13) or its input."""
    a = attrs_of(node)
    axes = a.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = const_input(m, node, 1, "axes").reshape(-1).tolist()
    if axes is None or len(axes) == 0:
        return None
    return tuple(sorted(int(x) % rank for x in axes))


@matcher("ReduceMean", "ReduceSum")
def reduce(m: OnnxModel, node):
    shape = m.shapes.get(node.input[0])
    if shape is None:
        raise unknown_shape(m, node.input[0], f"the shape of the {node.op_type}'s input")
    rank = len(shape)
    axes = _axes(m, node, rank)
    if axes is None:
        if attrs_of(node).get("noop_with_empty_axes", 0):
            return Match("identity", {}, [node.input[0]], node.output[0], [node])
        axes = tuple(range(rank))
    if 0 in axes:
        raise Unsupported(f"it reduces over the batch axis (axes {list(axes)}); mean and sum keep the batch")
    keepdims = bool(attrs_of(node).get("keepdims", 1))
    op = "mean" if node.op_type == "ReduceMean" else "sum"
    if op == "mean" and keepdims and rank > 2 and axes == tuple(range(2, rank)):
        return Match("gap", {}, [node.input[0]], node.output[0], [node])
    require_op(op, node.op_type)
    return Match(op, {"axes": compact(axes), "keepdims": keepdims}, [node.input[0]], node.output[0], [node])


@matcher("Split")
def split(m: OnnxModel, node):
    require_op("split", "Split")
    shape = m.shapes.get(node.input[0])
    if shape is None:
        raise unknown_shape(m, node.input[0], "the shape of the Split's input")
    a = attrs_of(node)
    axis = int(a.get("axis", 0)) % len(shape)
    if axis == 0:
        raise Unsupported("it splits the batch axis; split keeps the batch whole")
    size = shape[axis]
    if not isinstance(size, int):
        raise unknown_shape(m, node.input[0], f"dim {axis} of the Split's input")
    outputs = list(node.output)
    if len(node.input) > 1 and node.input[1]:
        sizes = [int(s) for s in const_input(m, node, 1, "split sizes").reshape(-1)]
    elif "split" in a:
        sizes = [int(s) for s in a["split"]]
    else:  # equal parts; opset 18's num_outputs makes the last one smaller where it does not divide
        n = int(a.get("num_outputs", len(outputs)))
        step = -(-size // n)
        sizes = [min(step, size - i * step) for i in range(n)]
    if sum(sizes) != size or any(s <= 0 for s in sizes):
        raise Unsupported(f"its sizes {sizes} do not cut axis {axis} of size {size} into parts")
    return [Match("split", {"sizes": tuple(sizes), "axis": axis, "part": i}, [node.input[0]], out, [node])
            for i, out in enumerate(outputs) if out and (m.users(out) or out in m.outputs)]


@matcher("Transpose")
def transpose(m: OnnxModel, node):
    shape = m.shapes.get(node.input[0])
    perm = attrs_of(node).get("perm")
    if perm is None:
        if shape is None:
            raise unknown_shape(m, node.input[0], "the rank of the Transpose's input")
        perm = list(reversed(range(len(shape))))
    perm = [int(p) for p in perm]
    if perm[0] != 0:
        raise Unsupported(f"perm {perm} moves the batch axis; permute keeps it first")
    require_op("permute", "Transpose")
    return Match("permute", {"dims": tuple(perm)}, [node.input[0]], node.output[0], [node])


@matcher("LayerNormalization")
def layer_norm(m: OnnxModel, node):
    require_op("layer_norm", "LayerNormalization")
    if len([o for o in node.output if o]) > 1:
        raise Unsupported("its mean and inverse deviation outputs are read; layer_norm gives only the result")
    shape = m.shapes.get(node.input[0])
    if shape is None:
        raise unknown_shape(m, node.input[0], "the shape of the LayerNormalization's input")
    a = attrs_of(node)
    rank = len(shape)
    axis = int(a.get("axis", -1)) % rank
    if axis == 0:
        raise Unsupported("it normalizes over the batch axis")
    normalized = tuple(shape[axis:])
    if not all(isinstance(d, int) for d in normalized):
        raise unknown_shape(m, node.input[0], f"dims {axis}.. of the LayerNormalization's input")
    scale = const_input(m, node, 1, "scale")
    bias = const_input(m, node, 2, "bias")
    try:
        weight = np.broadcast_to(scale, normalized).astype(np.float32)
        shift = np.zeros(normalized, np.float32) if bias is None else np.broadcast_to(bias, normalized)
    except ValueError:
        raise Unsupported(f"its scale {list(scale.shape)} or bias does not fit the normalized dims "
                          f"{list(normalized)}") from None
    args = {"axes": compact(tuple(range(axis, rank))), "eps": round_float(float(a.get("epsilon", 1e-5)))}
    return Match("layer_norm", args, [node.input[0]], node.output[0], [node],
                 {"weight": weight.copy(), "bias": np.asarray(shift, np.float32).copy()})


@matcher("Expand")
def expand(m: OnnxModel, node):
    raise Unsupported("Expand has a layer only as a broadcast into add, mul, sub or div (which broadcast)")


def through_expand(m: OnnxModel, tensor: str, user, other: str) -> tuple[str, list]:
    """`tensor`, or the input of the Expand that makes it when `user` (a broadcasting merge with `other`) gives
    the same result without it: the Expand's target broadcasts to no more than `other`'s shape. Returns the
    tensor to read and the Expand node to absorb (or none)."""
    node = m.producer_of(tensor, "Expand")
    if node is None or not m.single_user(tensor, user):
        return tensor, []
    source, out, target = m.shapes.get(node.input[0]), m.shapes.get(node.output[0]), m.shapes.get(other)
    if source is None or out is None or target is None or len(out) != len(target) or len(source) > len(out):
        return tensor, []
    if any(o != t and o != 1 for o, t in zip(out, target)):  # Expand widens past the other operand
        return tensor, []
    return node.input[0], [node]
