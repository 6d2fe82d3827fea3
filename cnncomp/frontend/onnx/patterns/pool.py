"""Pooling: the window pools (ceil mode recovered), global pools, minpool and k-max pooling patterns."""

from __future__ import annotations

from cnncomp.frontend.onnx.model import OnnxModel, attrs_of
from cnncomp.frontend.onnx.patterns.base import (
    Match, Unsupported, auto_pad, has_param, matcher, require_op, scalar, single, window_args,
)
from cnncomp.ops.registry import compact


def _ceil_form(m: OnnxModel, node, args: dict, rank: int) -> dict:
    """Floor-mode pooling with extra end padding, as cnncomp lowers `ceil=true`, back to ceil mode.

    The two agree whenever the windows do: the same begin padding, and an output size that ceil mode
    with symmetric padding gives too (the extra end padding only lets the last window fit)."""
    pads = args["p"] if isinstance(args["p"], tuple) and len(args["p"]) == 2 * rank else None
    if args.get("ceil") or pads is None or any(e < b for b, e in zip(pads[:rank], pads[rank:])):
        return args
    shape, out = m.shapes.get(node.input[0]), m.shapes.get(node.output[0])
    if shape is None or out is None or not all(isinstance(d, int) for d in tuple(shape[2:]) + tuple(out[2:])):
        return args
    kernel = _as_list(args["k"], rank)
    stride = _as_list(args["s"], rank)
    dilation = _as_list(args.get("d", 1), rank)
    for n, k, s, d, b, o in zip(shape[2:], kernel, stride, dilation, pads[:rank], out[2:]):
        span = n + 2 * b - d * (k - 1) - 1
        ceil_out = -(-span // s) + 1
        if (ceil_out - 1) * s >= n + b:
            ceil_out -= 1
        if span < 0 or ceil_out != o or 2 * b > d * (k - 1) + 1:
            return args
    return {**args, "p": compact(tuple(pads[:rank])), "ceil": True}


def _as_list(value, rank: int) -> list:
    return list(value) if isinstance(value, tuple) else [value] * rank


def _global(m: OnnxModel, node, a: dict, op: str) -> Match | None:
    """A pool whose one unpadded window covers the whole (static) input: gap or gmp (adaptive pooling to 1)."""
    shape = m.shapes.get(node.input[0])
    if shape is None or list(shape[2:]) != list(a["kernel_shape"]) or any(a.get("pads", [])) \
            or any(d != 1 for d in a.get("dilations", [])):
        return None
    return Match(op, {}, [node.input[0]], node.output[0], [node])


@matcher("MaxPool")
def max_pool(m: OnnxModel, node):
    if len([o for o in node.output if o]) > 1:
        raise Unsupported("MaxPool with an Indices output has no layer")
    a = attrs_of(node)
    auto_pad(m, node, a)
    whole = _global(m, node, a, "gmp")
    if whole is not None:
        return whole
    rank = len(a["kernel_shape"])
    args = _ceil_form(m, node, {**window_args(a, rank), "ceil": bool(a.get("ceil_mode", 0))}, rank)
    return Match("maxpool", args, [node.input[0]], node.output[0], [node])


@matcher("AveragePool")
def average_pool(m: OnnxModel, node):
    a = attrs_of(node)
    auto_pad(m, node, a)
    whole = _global(m, node, a, "gap")
    if whole is not None:
        return whole
    rank = len(a["kernel_shape"])
    args = {**window_args(a, rank, with_dilation=False), "ceil": bool(a.get("ceil_mode", 0)),
            "count_pad": bool(a.get("count_include_pad", 0))}
    if not args["count_pad"]:  # with count_pad the extra end padding would be counted: not the same
        args = _ceil_form(m, node, args, rank)
    if any(d != 1 for d in a.get("dilations", [])):
        if not has_param("avgpool", "d"):
            raise Unsupported("a dilated AveragePool maps to avgpool(d=...), which this cnncomp does not register yet")
        args["d"] = compact(tuple(a["dilations"]))
    return Match("avgpool", args, [node.input[0]], node.output[0], [node])


@matcher("LpPool")
def lp_pool(m: OnnxModel, node):
    a = attrs_of(node)
    auto_pad(m, node, a)
    rank = len(a["kernel_shape"])
    args = window_args(a, rank, with_dilation=False)
    if any(args["p"] if isinstance(args["p"], tuple) else (args["p"],)):
        raise Unsupported("a padded LpPool has no layer (lppool takes no padding)")
    del args["p"]
    args["norm"] = int(a.get("p", 2))
    return Match("lppool", args, [node.input[0]], node.output[0], [node])


@matcher("GlobalAveragePool", "GlobalMaxPool")
def global_pool(m: OnnxModel, node):
    op = "gap" if node.op_type == "GlobalAveragePool" else "gmp"
    return Match(op, {}, [node.input[0]], node.output[0], [node])


def _min_pool(m: OnnxModel, node) -> Match | None:
    """Neg(MaxPool(Neg(x))) -> minpool."""
    pool = single(m, node.input[0], node, "MaxPool")
    if pool is None:
        return None
    neg = single(m, pool.input[0], pool, "Neg")
    if neg is None:
        return None
    a = attrs_of(pool)
    if any(d != 1 for d in a.get("dilations", [])) or a.get("ceil_mode", 0):
        return None
    args = window_args(a, len(a["kernel_shape"]), with_dilation=False)
    return Match("minpool", args, [neg.input[0]], node.output[0], [neg, pool, node])


@matcher("Neg")
def neg(m: OnnxModel, node):
    found = _min_pool(m, node)
    if found is None:
        require_op("neg", "Neg")
        return Match("neg", {}, [node.input[0]], node.output[0], [node])
    return found


@matcher("GatherElements")
def k_max_pool(m: OnnxModel, node):
    """GatherElements(x, GatherElements(idx, TopK(idx, k, smallest).indices)) with idx = TopK(x, k).indices."""
    fail = Unsupported("GatherElements has a layer only as the k-max pooling pattern (kmaxpool)")
    positions = m.producer_of(node.input[1], "GatherElements")
    if positions is None or not m.single_user(node.input[1], node):
        raise fail
    order = m.producer_of(positions.input[1], "TopK")
    first = m.producer_of(positions.input[0], "TopK")
    if order is None or first is None or first.input[0] != node.input[0] or order.input[0] != first.output[1]:
        raise fail
    k = scalar(m.const(first.input[1]))
    if k is None:
        raise fail
    return Match("kmaxpool", {"k": int(k)}, [node.input[0]], node.output[0], [first, order, positions, node])
