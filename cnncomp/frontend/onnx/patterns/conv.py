"""Convolutions, dense layers and norms: Conv, ConvTranspose, DeformConv, Gemm, MatMul, BatchNormalization, the group-norm pattern."""

from __future__ import annotations

import numpy as np

from cnncomp.frontend.onnx.model import OnnxModel, attrs_of
from cnncomp.frontend.onnx.patterns.base import (
    Match, Unsupported, auto_pad, const_input, has_param, matcher, require_op, round_float, single, window_args,
)
from cnncomp.ops.registry import compact


@matcher("Conv")
def conv(m: OnnxModel, node):
    a = attrs_of(node)
    auto_pad(m, node, a)
    w = const_input(m, node, 1, "weight")
    bias = const_input(m, node, 2, "bias")
    rank = w.ndim - 2
    a.setdefault("kernel_shape", list(w.shape[2:]))
    args = {"out": int(w.shape[0]), **window_args(a, rank), "g": int(a.get("group", 1)), "bias": bias is not None}
    weights = {"weight": w} | ({"bias": bias} if bias is not None else {})
    return Match("conv", args, [node.input[0]], node.output[0], [node], weights)


@matcher("ConvTranspose")
def conv_transpose(m: OnnxModel, node):
    require_op("conv_transpose", "ConvTranspose")
    a = attrs_of(node)
    auto_pad(m, node, a)
    if "output_shape" in a:
        raise Unsupported("output_shape is not read; export with pads and output_padding")
    w = const_input(m, node, 1, "weight")
    bias = const_input(m, node, 2, "bias")
    rank = w.ndim - 2
    groups = int(a.get("group", 1))
    a.setdefault("kernel_shape", list(w.shape[2:]))
    args = {"out": int(w.shape[1]) * groups, **window_args(a, rank),
            "output_padding": compact(tuple(a.get("output_padding", [0] * rank))), "g": groups,
            "bias": bias is not None}
    weights = {"weight": w} | ({"bias": bias} if bias is not None else {})
    return Match("conv_transpose", args, [node.input[0]], node.output[0], [node], weights)


@matcher("DeformConv")
def deform_conv(m: OnnxModel, node):
    a = attrs_of(node)
    w = const_input(m, node, 1, "weight")
    bias = const_input(m, node, 3, "bias")
    rank = w.ndim - 2
    a.setdefault("kernel_shape", list(w.shape[2:]))
    args = {"out": int(w.shape[0]), **window_args(a, rank), "g": int(a.get("group", 1)), "bias": bias is not None,
            "offset_groups": int(a.get("offset_group", 1))}
    inputs = [node.input[0], node.input[2]]
    if len(node.input) > 4 and node.input[4]:
        if not has_param("deform_conv", "mask"):
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
    w = const_input(m, node, 1, "weight")
    w = w if a.get("transB", 0) else w.T
    if a.get("alpha", 1.0) != 1.0:
        w = w * float(a["alpha"])
    c = const_input(m, node, 2, "bias")
    weights = {"weight": np.ascontiguousarray(w)}
    if c is not None:
        if a.get("beta", 1.0) != 1.0:
            c = c * float(a["beta"])
        if c.size not in (1, w.shape[0]):
            raise Unsupported(f"its bias has shape {list(c.shape)}, not [{w.shape[0]}]")
        weights["bias"] = np.broadcast_to(c.reshape(-1), (w.shape[0],)).copy()
    args = {"out": int(w.shape[0]), "bias": c is not None}
    return Match("linear", args, [node.input[0]], node.output[0], [node], weights)


def matmul_linear(m: OnnxModel, node) -> Match | None:
    w = m.const(node.input[1])
    if w is None or w.ndim != 2 or m.is_const(node.input[0]):
        return None
    weights = {"weight": np.ascontiguousarray(w.T)}
    return Match("linear", {"out": int(w.shape[1]), "bias": False}, [node.input[0]], node.output[0], [node], weights)


@matcher("MatMul")
def matmul(m: OnnxModel, node):
    found = matmul_linear(m, node)
    if found is None:
        raise Unsupported("a MatMul is a linear layer only with a constant 2-D weight as its second input")
    return found


# ---- normalization ----------------------------------------------------------


@matcher("BatchNormalization")
def batch_norm(m: OnnxModel, node):
    if len([o for o in node.output if o]) > 1 or attrs_of(node).get("training_mode", 0):
        raise Unsupported("training-mode batch norm (running statistics as outputs); export in eval mode")
    names = ("weight", "bias", "running_mean", "running_var")
    weights = {n: const_input(m, node, i + 1, n.replace("_", " ")) for i, n in enumerate(names)}
    eps = float(attrs_of(node).get("epsilon", 1e-5))
    return Match("bn", {"eps": round_float(eps)}, [node.input[0]], node.output[0], [node], weights)



def group_norm(m: OnnxModel, node) -> Match | None:
    """Add(Mul(Reshape(InstanceNorm(Reshape(x, [N, g, -1])), shape of x), gamma), beta) -> gn(g)."""
    mul = None
    for i in (0, 1):
        mul = single(m, node.input[i], node, "Mul")
        if mul is not None:
            beta = m.const(node.input[1 - i])
            break
    if mul is None or beta is None:
        return None
    for j in (0, 1):
        back = single(m, mul.input[j], mul, "Reshape")
        gamma = m.const(mul.input[1 - j])
        if back is not None and gamma is not None:
            break
    else:
        return None
    inorm = single(m, back.input[0], back, "InstanceNormalization")
    if inorm is None:
        return None
    grouped = single(m, inorm.input[0], inorm, "Reshape")
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
    return Match("gn", {"groups": groups, "eps": round_float(eps)}, [grouped.input[0]], node.output[0], nodes,
                 weights)
