"""ONNX node patterns back to layers: one table row per pattern.

Each matcher is keyed by the op type of the pattern's last node (its anchor)
and looks back through producers that nothing else reads. It returns a
`Match` (the layer: op, language arguments, data inputs, weights, the nodes
it absorbs), or raises `Unsupported` with the reason. The importer visits
anchors last to first, so a pattern absorbs its earlier nodes before they
are visited on their own.

    Conv                                   -> conv
    ConvTranspose                          -> conv_transpose
    DeformConv                             -> deform_conv
    Gemm; MatMul(x, W) [+ Add(., b)]       -> linear
    BatchNormalization                     -> bn
    Reshape-InstanceNorm-Reshape-Mul-Add   -> gn
    MaxPool AveragePool LpPool             -> maxpool avgpool lppool (ceil mode recovered from end padding)
    a pool over the whole static input     -> gmp gap
    Neg-MaxPool-Neg                        -> minpool
    GlobalAveragePool GlobalMaxPool        -> gap gmp
    TopK-TopK-GatherElements x2            -> kmaxpool
    Flatten; Reshape to [N, -1]            -> flatten
    Reshape-Transpose(1<->2)-Reshape       -> shuffle
    Reshape-Transpose-Reshape (6-D, r)     -> pixel_shuffle / pixel_unshuffle
    DepthToSpace(CRD); SpaceToDepth (C=1)  -> pixel_shuffle / pixel_unshuffle
    Resize                                 -> upsample
    Pad                                    -> pad
    Slice (one axis, step 1)               -> slice
    Concat Add Sum Mul                     -> concat add add mul
    Clip(0, 6) / Clip(0, inf)              -> relu6 / relu
    Sigmoid-Mul(x, .)                      -> silu
    Softplus-Tanh-Mul(x, .)                -> mish
    x*0.5*(1+erf(x/sqrt2))                 -> gelu
    Relu Sigmoid Tanh Elu LeakyRelu PRelu Selu Mish HardSigmoid HardSwish Softmax LogSoftmax Gelu Identity
                                           -> the layer of that name
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from cnncomp.frontend.onnx.model import SYMBOLIC_DIM, OnnxModel, attrs_of
from cnncomp.ops.registry import compact, get_op, padding_arg


class Unsupported(Exception):
    """A node the importer cannot turn into a layer; the message says why."""


@dataclass
class Match:
    """One layer found in the ONNX graph."""

    op: str
    args: dict
    inputs: list[str]  # ONNX tensors feeding the layer, in the layer's slot order
    output: str  # the ONNX tensor the layer produces
    nodes: list[onnx.NodeProto]  # every node the layer absorbs (the anchor last)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # suffix -> array

    @property
    def anchor(self) -> onnx.NodeProto:
        return self.nodes[-1]


Matcher = Callable[[OnnxModel, onnx.NodeProto], Match | None]
MATCHERS: dict[str, list[Matcher]] = {}


def matcher(*op_types: str):
    def deco(fn: Matcher) -> Matcher:
        for op_type in op_types:
            MATCHERS.setdefault(op_type, []).append(fn)
        return fn
    return deco


def require_op(name: str, onnx_op: str) -> None:
    """Refuse a pattern whose layer the registry does not have (yet)."""
    if get_op(name) is None:
        raise Unsupported(f"{onnx_op} maps to the layer '{name}', which this cnncomp does not register")


def _has_param(op_name: str, param: str) -> bool:
    op = get_op(op_name)
    return op is not None and any(p.name == param for p in op.params)


def _const_input(m: OnnxModel, node: onnx.NodeProto, index: int, what: str) -> np.ndarray | None:
    if len(node.input) <= index or not node.input[index]:
        return None
    value = m.const(node.input[index])
    if value is None:
        raise Unsupported(f"its {what} is computed at run time; the importer needs it constant")
    return value


def _single(m: OnnxModel, tensor: str, user: onnx.NodeProto, op_type: str) -> onnx.NodeProto | None:
    """The producer of `tensor` if it has op type `op_type` and `user` is its only reader."""
    node = m.producer_of(tensor, op_type)
    if node is not None and m.single_user(tensor, user):
        return node
    return None


def _scalar(value: np.ndarray | None) -> float | None:
    if value is None or value.size != 1:
        return None
    return float(value.reshape(-1)[0])


def _num(value: float):
    """An int where the value is integral (for readable arguments), else the float."""
    return int(value) if float(value).is_integer() else float(value)


# ---- convolutions and dense layers ----------------------------------------------


def _window_args(a: dict, rank: int, with_dilation: bool = True) -> dict:
    pads = tuple(a.get("pads", [0] * 2 * rank))
    args = {"k": compact(tuple(a["kernel_shape"])), "s": compact(tuple(a.get("strides", [1] * rank))),
            "p": padding_arg(pads)}
    if with_dilation:
        args["d"] = compact(tuple(a.get("dilations", [1] * rank)))
    return args


def _auto_pad(m: OnnxModel, node: onnx.NodeProto, a: dict) -> None:
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise Unsupported(f"auto_pad={a['auto_pad']} is not read; export with explicit pads")


@matcher("Conv")
def conv(m: OnnxModel, node):
    a = attrs_of(node)
    _auto_pad(m, node, a)
    w = _const_input(m, node, 1, "weight")
    bias = _const_input(m, node, 2, "bias")
    rank = w.ndim - 2
    a.setdefault("kernel_shape", list(w.shape[2:]))
    args = {"out": int(w.shape[0]), **_window_args(a, rank), "g": int(a.get("group", 1)), "bias": bias is not None}
    weights = {"weight": w} | ({"bias": bias} if bias is not None else {})
    return Match("conv", args, [node.input[0]], node.output[0], [node], weights)


@matcher("ConvTranspose")
def conv_transpose(m: OnnxModel, node):
    require_op("conv_transpose", "ConvTranspose")
    a = attrs_of(node)
    _auto_pad(m, node, a)
    if "output_shape" in a:
        raise Unsupported("output_shape is not read; export with pads and output_padding")
    w = _const_input(m, node, 1, "weight")
    bias = _const_input(m, node, 2, "bias")
    rank = w.ndim - 2
    groups = int(a.get("group", 1))
    a.setdefault("kernel_shape", list(w.shape[2:]))
    args = {"out": int(w.shape[1]) * groups, **_window_args(a, rank),
            "output_padding": compact(tuple(a.get("output_padding", [0] * rank))), "g": groups,
            "bias": bias is not None}
    weights = {"weight": w} | ({"bias": bias} if bias is not None else {})
    return Match("conv_transpose", args, [node.input[0]], node.output[0], [node], weights)


@matcher("DeformConv")
def deform_conv(m: OnnxModel, node):
    a = attrs_of(node)
    w = _const_input(m, node, 1, "weight")
    bias = _const_input(m, node, 3, "bias")
    rank = w.ndim - 2
    a.setdefault("kernel_shape", list(w.shape[2:]))
    args = {"out": int(w.shape[0]), **_window_args(a, rank), "g": int(a.get("group", 1)), "bias": bias is not None,
            "offset_groups": int(a.get("offset_group", 1))}
    inputs = [node.input[0], node.input[2]]
    if len(node.input) > 4 and node.input[4]:
        if not _has_param("deform_conv", "mask"):
            raise Unsupported("a DeformConv with a mask maps to deform_conv(mask=...), which this cnncomp "
                              "does not register yet")
        inputs.append(node.input[4])
    weights = {"weight": w} | ({"bias": bias} if bias is not None else {})
    return Match("deform_conv", args, inputs, node.output[0], [node], weights)


@matcher("Gemm")
def gemm(m: OnnxModel, node):
    a = attrs_of(node)
    if a.get("transA", 0):
        raise Unsupported("transA=1 is not a linear layer")
    w = _const_input(m, node, 1, "weight")
    w = w if a.get("transB", 0) else w.T
    if a.get("alpha", 1.0) != 1.0:
        w = w * float(a["alpha"])
    c = _const_input(m, node, 2, "bias")
    weights = {"weight": np.ascontiguousarray(w)}
    if c is not None:
        if a.get("beta", 1.0) != 1.0:
            c = c * float(a["beta"])
        if c.size not in (1, w.shape[0]):
            raise Unsupported(f"its bias has shape {list(c.shape)}, not [{w.shape[0]}]")
        weights["bias"] = np.broadcast_to(c.reshape(-1), (w.shape[0],)).copy()
    args = {"out": int(w.shape[0]), "bias": c is not None}
    return Match("linear", args, [node.input[0]], node.output[0], [node], weights)


def _matmul_linear(m: OnnxModel, node) -> Match | None:
    w = m.const(node.input[1])
    if w is None or w.ndim != 2 or m.is_const(node.input[0]):
        return None
    weights = {"weight": np.ascontiguousarray(w.T)}
    return Match("linear", {"out": int(w.shape[1]), "bias": False}, [node.input[0]], node.output[0], [node], weights)


@matcher("MatMul")
def matmul(m: OnnxModel, node):
    found = _matmul_linear(m, node)
    if found is None:
        raise Unsupported("a MatMul is a linear layer only with a constant 2-D weight as its second input")
    return found


# ---- normalization ----------------------------------------------------------


@matcher("BatchNormalization")
def batch_norm(m: OnnxModel, node):
    if len([o for o in node.output if o]) > 1 or attrs_of(node).get("training_mode", 0):
        raise Unsupported("training-mode batch norm (running statistics as outputs); export in eval mode")
    names = ("weight", "bias", "running_mean", "running_var")
    weights = {n: _const_input(m, node, i + 1, n.replace("_", " ")) for i, n in enumerate(names)}
    eps = float(attrs_of(node).get("epsilon", 1e-5))
    return Match("bn", {"eps": _round_float(eps)}, [node.input[0]], node.output[0], [node], weights)


def _round_float(value: float) -> float:
    """A float32 attribute as the short decimal it was written as (1e-05, not 9.999999747378752e-06)."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-")) if value else 0.0


def _group_norm(m: OnnxModel, node) -> Match | None:
    """Add(Mul(Reshape(InstanceNorm(Reshape(x, [N, g, -1])), shape of x), gamma), beta) -> gn(g)."""
    mul = None
    for i in (0, 1):
        mul = _single(m, node.input[i], node, "Mul")
        if mul is not None:
            beta = m.const(node.input[1 - i])
            break
    if mul is None or beta is None:
        return None
    for j in (0, 1):
        back = _single(m, mul.input[j], mul, "Reshape")
        gamma = m.const(mul.input[1 - j])
        if back is not None and gamma is not None:
            break
    else:
        return None
    inorm = _single(m, back.input[0], back, "InstanceNormalization")
    if inorm is None:
        return None
    grouped = _single(m, inorm.input[0], inorm, "Reshape")
    if grouped is None:
        return None
    target = m.const(grouped.input[1])
    scale, shift = m.const(inorm.input[1]), m.const(inorm.input[2])
    if target is None or scale is None or shift is None or not np.all(scale == 1) or not np.all(shift == 0):
        return None
    if len(target) != 3:
        return None
    groups = int(target[1])
    eps = float(attrs_of(inorm).get("epsilon", 1e-5))
    nodes = [grouped, inorm, back, mul, node]
    weights = {"weight": gamma.reshape(-1).copy(), "bias": beta.reshape(-1).copy()}
    return Match("gn", {"groups": groups, "eps": _round_float(eps)}, [grouped.input[0]], node.output[0], nodes,
                 weights)


# ---- pooling ------------------------------------------------------------------


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
    _auto_pad(m, node, a)
    whole = _global(m, node, a, "gmp")
    if whole is not None:
        return whole
    rank = len(a["kernel_shape"])
    args = _ceil_form(m, node, {**_window_args(a, rank), "ceil": bool(a.get("ceil_mode", 0))}, rank)
    return Match("maxpool", args, [node.input[0]], node.output[0], [node])


@matcher("AveragePool")
def average_pool(m: OnnxModel, node):
    a = attrs_of(node)
    _auto_pad(m, node, a)
    whole = _global(m, node, a, "gap")
    if whole is not None:
        return whole
    rank = len(a["kernel_shape"])
    args = {**_window_args(a, rank, with_dilation=False), "ceil": bool(a.get("ceil_mode", 0)),
            "count_pad": bool(a.get("count_include_pad", 0))}
    if not args["count_pad"]:  # with count_pad the extra end padding would be counted: not the same
        args = _ceil_form(m, node, args, rank)
    if any(d != 1 for d in a.get("dilations", [])):
        if not _has_param("avgpool", "d"):
            raise Unsupported("a dilated AveragePool maps to avgpool(d=...), which this cnncomp does not register yet")
        args["d"] = compact(tuple(a["dilations"]))
    return Match("avgpool", args, [node.input[0]], node.output[0], [node])


@matcher("LpPool")
def lp_pool(m: OnnxModel, node):
    a = attrs_of(node)
    _auto_pad(m, node, a)
    rank = len(a["kernel_shape"])
    args = _window_args(a, rank, with_dilation=False)
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
    pool = _single(m, node.input[0], node, "MaxPool")
    if pool is None:
        return None
    neg = _single(m, pool.input[0], pool, "Neg")
    if neg is None:
        return None
    a = attrs_of(pool)
    if any(d != 1 for d in a.get("dilations", [])) or a.get("ceil_mode", 0):
        return None
    args = _window_args(a, len(a["kernel_shape"]), with_dilation=False)
    return Match("minpool", args, [neg.input[0]], node.output[0], [neg, pool, node])


@matcher("Neg")
def neg(m: OnnxModel, node):
    found = _min_pool(m, node)
    if found is None:
        raise Unsupported("Neg has a layer only as Neg-MaxPool-Neg (minpool)")
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
    k = _scalar(m.const(first.input[1]))
    if k is None:
        raise fail
    return Match("kmaxpool", {"k": int(k)}, [node.input[0]], node.output[0], [first, order, positions, node])


# ---- tensor layout ------------------------------------------------------------


@matcher("Flatten")
def flatten(m: OnnxModel, node):
    return Match("flatten", {"axis": int(attrs_of(node).get("axis", 1))}, [node.input[0]], node.output[0], [node])


def reshape_target(m: OnnxModel, node) -> list[int | str] | None:
    """The Reshape's target with 0 and the batch marker resolved against its input's shape; None if unknown."""
    target = m.const(node.input[1])
    shape = m.shapes.get(node.input[0])
    if target is None or shape is None:
        return None
    out: list[int | str] = []
    for i, t in enumerate(target.tolist()):
        if t == 0 and not attrs_of(node).get("allowzero", 0):
            out.append(shape[i])
        elif t == SYMBOLIC_DIM:
            out.append("dyn")
        else:
            out.append(int(t))
    return out


@matcher("Reshape")
def reshape(m: OnnxModel, node):
    for pattern in (_shuffle, _pixel_shuffle):
        found = pattern(m, node)
        if found is not None:
            return found
    shape = m.shapes.get(node.input[0])
    target = reshape_target(m, node)
    if shape is None or target is None:
        raise Unsupported("a Reshape whose target is computed at run time")
    if len(target) == 2 and (target[0] in ("dyn", shape[0]) or target[0] == shape[0]):
        rest = [d for d in shape[1:]]
        if target[1] == -1 or (all(isinstance(d, int) for d in rest) and target[1] == math.prod(rest)):
            return Match("flatten", {"axis": 1}, [node.input[0]], node.output[0], [node])
    raise Unsupported(f"a Reshape from {list(shape)} to {target} is not a flatten, shuffle or pixel shuffle")


def _shuffle(m: OnnxModel, node) -> Match | None:
    """Reshape(Transpose(Reshape(x, [N, g, C/g, ...]), swap 1 and 2), shape of x) -> shuffle(g)."""
    transpose = _single(m, node.input[0], node, "Transpose")
    if transpose is None:
        return None
    split = _single(m, transpose.input[0], transpose, "Reshape")
    if split is None:
        return None
    x = split.input[0]
    shape, out_shape, target = m.shapes.get(x), m.shapes.get(node.output[0]), reshape_target(m, split)
    perm = list(attrs_of(transpose).get("perm", []))
    if shape is None or target is None or out_shape is None or len(target) < 3 or tuple(out_shape) != tuple(shape):
        return None
    if perm != [0, 2, 1] + list(range(3, len(target))):
        return None
    groups, per_group = target[1], target[2]
    if not isinstance(shape[1], int) or not isinstance(groups, int) or groups * per_group != shape[1]:
        return None
    return Match("shuffle", {"groups": groups}, [x], node.output[0], [split, transpose, node])


def _pixel_shuffle(m: OnnxModel, node) -> Match | None:
    """The 6-D Reshape-Transpose-Reshape of F.pixel_shuffle / F.pixel_unshuffle (2-D) -> pixel_(un)shuffle(r)."""
    transpose = _single(m, node.input[0], node, "Transpose")
    if transpose is None:
        return None
    split = _single(m, transpose.input[0], transpose, "Reshape")
    if split is None:
        return None
    x = split.input[0]
    shape, out, target = m.shapes.get(x), m.shapes.get(node.output[0]), reshape_target(m, split)
    perm = list(attrs_of(transpose).get("perm", []))
    if shape is None or out is None or target is None or len(shape) != 4 or len(target) != 6 or len(out) != 4:
        return None
    if perm == [0, 1, 4, 2, 5, 3] and isinstance(target[2], int) and target[2] == target[3]:
        r = target[2]
        if out[1] == shape[1] // (r * r) if isinstance(shape[1], int) else False:
            require_op("pixel_shuffle", "a pixel-shuffle Reshape-Transpose-Reshape")
            return Match("pixel_shuffle", {"r": r}, [x], node.output[0], [split, transpose, node])
    if perm == [0, 1, 3, 5, 2, 4] and isinstance(target[3], int) and target[3] == target[5]:
        r = target[3]
        require_op("pixel_unshuffle", "a pixel-unshuffle Reshape-Transpose-Reshape")
        return Match("pixel_unshuffle", {"r": r}, [x], node.output[0], [split, transpose, node])
    return None


@matcher("DepthToSpace")
def depth_to_space(m: OnnxModel, node):
    a = attrs_of(node)
    r = int(a["blocksize"])
    channels_out = (m.shapes.get(node.output[0]) or (None, None))[1]
    if a.get("mode", "DCR") != "CRD" and channels_out != 1:
        raise Unsupported("DepthToSpace in DCR mode orders channels unlike pixel_shuffle (CRD); "
                          "export with PyTorch's pixel_shuffle (CRD)")
    require_op("pixel_shuffle", "DepthToSpace")
    return Match("pixel_shuffle", {"r": r}, [node.input[0]], node.output[0], [node])


@matcher("SpaceToDepth")
def space_to_depth(m: OnnxModel, node):
    r = int(attrs_of(node)["blocksize"])
    channels_in = (m.shapes.get(node.input[0]) or (None, None))[1]
    if channels_in != 1:
        raise Unsupported("SpaceToDepth puts the block offset before the channel, unlike pixel_unshuffle "
                          "(the same only for 1 input channel)")
    require_op("pixel_unshuffle", "SpaceToDepth")
    return Match("pixel_unshuffle", {"r": r}, [node.input[0]], node.output[0], [node])


@matcher("Resize", "Upsample")
def resize(m: OnnxModel, node):
    a = attrs_of(node)
    shape = m.shapes.get(node.input[0])
    out = m.shapes.get(node.output[0])
    mode = a.get("mode", "nearest")
    coord = a.get("coordinate_transformation_mode", "half_pixel")
    scales = m.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = m.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if scales is not None and scales.size == 0:
        scales = None
    args: dict = {}
    if scales is not None:
        if list(scales[:2]) != [1, 1]:
            raise Unsupported("it resizes the batch or channel dims")
        args["scale"] = compact(tuple(_num(float(s)) for s in scales[2:]))
    elif sizes is not None or (out is not None and all(isinstance(d, int) for d in out[2:])):
        target = [int(s) for s in sizes[2:]] if sizes is not None else list(out[2:])
        if shape is not None and all(isinstance(d, int) for d in shape[2:]) and \
                all(t % n == 0 for t, n in zip(target, shape[2:])) and not _has_param("upsample", "size"):
            args["scale"] = compact(tuple(t // n for t, n in zip(target, shape[2:])))
        elif _has_param("upsample", "size"):
            args["size"] = compact(tuple(target))
        else:
            raise Unsupported(f"it resizes to sizes {target}, which upsample(scale=) cannot say")
    else:
        raise Unsupported("its scales and sizes are computed at run time")
    if mode == "nearest":
        if coord not in ("asymmetric",) or a.get("nearest_mode", "round_prefer_floor") != "floor":
            raise Unsupported(f"nearest with coordinate_transformation_mode={coord} and nearest_mode="
                              f"{a.get('nearest_mode', 'round_prefer_floor')} is not F.interpolate's nearest "
                              "(asymmetric, floor)")
        args["mode"] = "nearest"
    elif mode in ("linear", "cubic"):
        if mode == "cubic" and (abs(a.get("cubic_coeff_a", -0.75) + 0.75) > 1e-6 or a.get("exclude_outside", 0)):
            raise Unsupported("cubic Resize with coefficients other than PyTorch's (a=-0.75)")
        if mode == "cubic" and not _has_param_choice("upsample", "mode", "cubic"):
            raise Unsupported("cubic Resize maps to upsample(mode=\"cubic\"), which this cnncomp does not have yet")
        args["mode"] = mode
        if coord == "align_corners":
            if not _has_param("upsample", "align_corners"):
                raise Unsupported("align_corners Resize maps to upsample(align_corners=true), which this "
                                  "cnncomp does not have yet")
            args["align_corners"] = True
        elif coord not in ("pytorch_half_pixel", "half_pixel"):
            raise Unsupported(f"coordinate_transformation_mode={coord} is not one of F.interpolate's")
    else:
        raise Unsupported(f"Resize mode {mode} has no layer")
    return Match("upsample", args, [node.input[0]], node.output[0], [node])


def _has_param_choice(op_name: str, param: str, choice: str) -> bool:
    op = get_op(op_name)
    return op is not None and any(p.name == param and (not p.choices or choice in p.choices) for p in op.params)


@matcher("Pad")
def pad(m: OnnxModel, node):
    a = attrs_of(node)
    mode = a.get("mode", "constant")
    pads = _const_input(m, node, 1, "pads")
    value = _scalar(_const_input(m, node, 2, "constant value")) or 0.0
    if len(node.input) > 3 and node.input[3]:
        raise Unsupported("Pad with axes is not read")
    rank = len(pads) // 2
    if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        raise Unsupported("it pads the batch or channel dims")
    spatial = tuple(int(p) for p in list(pads[2:rank]) + list(pads[rank + 2:]))
    args = {"p": padding_arg(spatial)}
    if mode != "constant":
        torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
        if torch_mode is None or not _has_param_choice("pad", "mode", torch_mode):
            raise Unsupported(f"Pad mode {mode} maps to pad(mode=\"{torch_mode}\"), which this cnncomp does not have yet")
        args["mode"] = torch_mode
    elif value:
        args["value"] = _num(value)
    return Match("pad", args, [node.input[0]], node.output[0], [node])


@matcher("Slice")
def slice_(m: OnnxModel, node):
    starts, ends = _const_input(m, node, 1, "starts"), _const_input(m, node, 2, "ends")
    axes = _const_input(m, node, 3, "axes")
    steps = _const_input(m, node, 4, "steps")
    if starts.size != 1 or (steps is not None and np.any(steps != 1)):
        raise Unsupported("a Slice over several axes, or with steps, has no layer")
    shape = m.shapes.get(node.input[0])
    axis = int(axes.reshape(-1)[0]) if axes is not None else 0
    if shape is None:
        raise Unsupported("the Slice input's shape is unknown")
    axis %= len(shape)
    size = shape[axis]
    if not isinstance(size, int):
        raise Unsupported("a Slice along a dynamic dim")
    start, end = (int(np.clip(v if v >= 0 else v + size, 0, size)) for v in (int(starts[0]), int(ends[0])))
    return Match("slice", {"start": start, "end": end, "axis": axis}, [node.input[0]], node.output[0], [node])


# ---- merges and activations ------------------------------------------------------


@matcher("Concat")
def concat(m: OnnxModel, node):
    _no_const_operands(m, node)
    axis = int(attrs_of(node)["axis"])
    rank = len(m.shapes.get(node.output[0]) or ()) or None
    if axis < 0 and rank:
        axis += rank
    return Match("concat", {"axis": axis}, list(node.input), node.output[0], [node])


def _no_const_operands(m: OnnxModel, node) -> None:
    for name in node.input:
        if m.is_const(name):
            raise Unsupported(f"{node.op_type} with a constant operand has no layer (a layer's operands are tensors)")


@matcher("Add", "Sum")
def add(m: OnnxModel, node):
    if node.op_type == "Add":
        found = _group_norm(m, node)
        if found is not None:
            return found
        for i in (0, 1):
            mm = _single(m, node.input[i], node, "MatMul")
            bias = m.const(node.input[1 - i])
            if mm is not None and bias is not None:
                lin = _matmul_linear(m, mm)
                if lin is not None and bias.size == lin.args["out"]:
                    lin.args["bias"] = True
                    lin.weights["bias"] = bias.reshape(-1).copy()
                    lin.nodes.append(node)
                    lin.output = node.output[0]
                    return lin
    _no_const_operands(m, node)
    return Match("add", {}, list(node.input), node.output[0], [node])


@matcher("Mul")
def mul(m: OnnxModel, node):
    for pattern in (_silu, _mish, _gelu):
        found = pattern(m, node)
        if found is not None:
            return found
    _no_const_operands(m, node)
    return Match("mul", {}, list(node.input), node.output[0], [node])


def _silu(m: OnnxModel, node) -> Match | None:
    for i in (0, 1):
        sig = _single(m, node.input[i], node, "Sigmoid")
        if sig is not None and sig.input[0] == node.input[1 - i]:
            return Match("silu", {}, [sig.input[0]], node.output[0], [sig, node])
    return None


def _mish(m: OnnxModel, node) -> Match | None:
    for i in (0, 1):
        tanh = _single(m, node.input[i], node, "Tanh")
        softplus = tanh and _single(m, tanh.input[0], tanh, "Softplus")
        if softplus is not None and softplus.input[0] == node.input[1 - i]:
            require_op("mish", "x * tanh(softplus(x))")
            return Match("mish", {}, [node.input[1 - i]], node.output[0], [softplus, tanh, node])
    return None


def _gelu(m: OnnxModel, node) -> Match | None:
    """x * 0.5 * (1 + erf(x / sqrt(2))), in PyTorch's and cnncomp's orders of the multiplies."""
    def scaled(tensor, user, factor):  # Mul(x, factor) or Div(x, 1/factor) -> x
        for op_type, want in (("Mul", factor), ("Div", 1 / factor)):
            n = _single(m, tensor, user, op_type)
            if n is not None:
                c = _scalar(m.const(n.input[1]))
                if c is not None and abs(c - want) < 1e-4 * abs(want):
                    return n, n.input[0]
        return None, None

    def erf_part(tensor, user):  # 1 + erf(x/sqrt2) -> (nodes, x)
        plus = _single(m, tensor, user, "Add")
        if plus is None:
            return None
        for i in (0, 1):
            erf = _single(m, plus.input[i], plus, "Erf")
            if erf is not None and _scalar(m.const(plus.input[1 - i])) == 1.0:
                div, x = scaled(erf.input[0], erf, 1 / math.sqrt(2))
                if div is not None:
                    return [div, erf, plus], x
        return None

    for i in (0, 1):  # cnncomp: Mul(Mul(x, 0.5), 1 + erf); PyTorch: Mul(Mul(x, 1 + erf), 0.5)
        half, x = scaled(node.input[i], node, 0.5)
        if half is not None:
            part = erf_part(node.input[1 - i], node)
            if part and part[1] == x:
                return Match("gelu", {}, [x], node.output[0], part[0] + [half, node])
        inner = _single(m, node.input[i], node, "Mul")
        if inner is not None and _scalar(m.const(node.input[1 - i])) == 0.5:
            for j in (0, 1):
                part = erf_part(inner.input[j], inner)
                if part and part[1] == inner.input[1 - j]:
                    return Match("gelu", {}, [part[1]], node.output[0], part[0] + [inner, node])
    return None


@matcher("Clip")
def clip(m: OnnxModel, node):
    lo = _scalar(_const_input(m, node, 1, "minimum"))
    hi = _scalar(_const_input(m, node, 2, "maximum"))
    if lo == 0.0 and hi == 6.0:
        return Match("relu6", {}, [node.input[0]], node.output[0], [node])
    if lo == 0.0 and (hi is None or math.isinf(hi)):
        return Match("relu", {}, [node.input[0]], node.output[0], [node])
    raise Unsupported(f"Clip({lo}, {hi}) is neither relu6 (0, 6) nor relu (0, inf)")


_POINTWISE = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hardswish", "Selu": "selu",
              "Mish": "mish", "Identity": "identity", "Dropout": "dropout"}


@matcher(*_POINTWISE)
def pointwise(m: OnnxModel, node):
    op = _POINTWISE[node.op_type]
    if node.op_type == "Selu":
        a = attrs_of(node)
        if abs(a.get("alpha", 1.67326) - 1.6732632) > 1e-5 or abs(a.get("gamma", 1.0507) - 1.0507010) > 1e-5:
            raise Unsupported("Selu with constants other than PyTorch's")
    if node.op_type == "Dropout":
        op = "identity"  # inference: dropout is the identity (ratio and training mode are not kept)
    require_op(op, node.op_type)
    return Match(op, {}, [node.input[0]], node.output[0], [node])


@matcher("HardSigmoid")
def hard_sigmoid(m: OnnxModel, node):
    a = attrs_of(node)
    if abs(a.get("alpha", 0.2) - 1 / 6) > 1e-6 or abs(a.get("beta", 0.5) - 0.5) > 1e-6:
        raise Unsupported(f"HardSigmoid(alpha={a.get('alpha', 0.2)}, beta={a.get('beta', 0.5)}) is not "
                          "PyTorch's hardsigmoid (1/6, 1/2)")
    return Match("hardsigmoid", {}, [node.input[0]], node.output[0], [node])


@matcher("Gelu")
def gelu_op(m: OnnxModel, node):
    approximate = attrs_of(node).get("approximate", "none")
    args = {}
    if approximate != "none":
        if not _has_param("gelu", "approximate"):
            raise Unsupported("Gelu(approximate=tanh) maps to gelu(approximate=\"tanh\"), not registered yet")
        args["approximate"] = approximate
    return Match("gelu", args, [node.input[0]], node.output[0], [node])


@matcher("Elu")
def elu(m: OnnxModel, node):
    alpha = float(attrs_of(node).get("alpha", 1.0))
    return Match("elu", {"alpha": _num(_round_float(alpha))}, [node.input[0]], node.output[0], [node])


@matcher("LeakyRelu")
def leaky_relu(m: OnnxModel, node):
    alpha = float(attrs_of(node).get("alpha", 0.01))
    return Match("leaky_relu", {"a": _round_float(alpha)}, [node.input[0]], node.output[0], [node])


@matcher("PRelu")
def prelu(m: OnnxModel, node):
    slope = _const_input(m, node, 1, "slope")
    shape = m.shapes.get(node.input[0])
    channels = shape[1] if shape and len(shape) > 1 else None
    if slope.size != 1 and (slope.size != channels or slope.reshape(-1).size != slope.shape[0]):
        raise Unsupported(f"a PRelu slope of shape {list(slope.shape)} is not one per channel or shared")
    return Match("prelu", {"shared": slope.size == 1 and channels != 1}, [node.input[0]], node.output[0], [node],
                 {"weight": slope.reshape(-1).copy()})


@matcher("Softmax", "LogSoftmax")
def softmax(m: OnnxModel, node):
    axis = int(attrs_of(node).get("axis", -1))
    rank = len(m.shapes.get(node.input[0]) or ())
    if axis < 0 and rank:
        axis += rank
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    return Match(op, {"axis": axis}, [node.input[0]], node.output[0], [node])


@matcher("Softplus", "Erf", "TopK")
def helper_only(m: OnnxModel, node):
    raise Unsupported(f"{node.op_type} has a layer only inside a pattern (mish, gelu, kmaxpool)")
