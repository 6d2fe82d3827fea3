"""Merges and activations, with the multi-node activations (silu, mish, gelu) and Add-anchored patterns."""

from __future__ import annotations

import math

from cnncomp.frontend.onnx.model import OnnxModel, attrs_of
from cnncomp.frontend.onnx.patterns.affine import channel_affine, channel_vector, conv_bias, scaled_linear
from cnncomp.frontend.onnx.patterns.conv import group_norm, matmul_linear
from cnncomp.frontend.onnx.patterns.tensor import through_expand
from cnncomp.frontend.onnx.patterns.base import (
    Match, Unsupported, const_input, has_param, matcher, no_const_operands, num, require_op, round_float, scalar, single,
)


@matcher("Concat")
def concat(m: OnnxModel, node):
    no_const_operands(m, node)
    axis = int(attrs_of(node)["axis"])
    rank = len(m.shapes.get(node.output[0]) or ()) or None
    if axis < 0 and rank:
        axis += rank
    return Match("concat", {"axis": axis}, list(node.input), node.output[0], [node])


@matcher("Add", "Sum")
def add(m: OnnxModel, node):
    if node.op_type == "Add":
        found = group_norm(m, node)
        if found is not None:
            return found
        for i in (0, 1):
            mm = single(m, node.input[i], node, "MatMul")
            bias = m.const(node.input[1 - i])
            if mm is not None and bias is not None:
                lin = matmul_linear(m, mm)
                if lin is not None and bias.size == lin.args["out"]:
                    lin.args["bias"] = True
                    lin.weights["bias"] = bias.reshape(-1).copy()
                    lin.nodes.append(node)
                    lin.output = node.output[0]
                    return lin
        found = conv_bias(m, node) or channel_affine(m, node)
        if found is not None:
            return found
    return _merge(m, node, "add")


def _merge(m: OnnxModel, node, op: str) -> Match:
    """A merge of tensors, an Expand before an operand dropped where the merge's broadcasting does the same."""
    no_const_operands(m, node)
    inputs, absorbed = list(node.input), []
    if len(inputs) == 2:
        for i in (0, 1):
            inputs[i], expands = through_expand(m, inputs[i], node, inputs[1 - i])
            absorbed += expands
    return Match(op, {}, inputs, node.output[0], absorbed + [node])


@matcher("Mul")
def mul(m: OnnxModel, node):
    for pattern in (_silu, _mish, _gelu, _hardswish, _hardsigmoid_form, scaled_linear, channel_affine):
        found = pattern(m, node)
        if found is not None:
            return found
    return _merge(m, node, "mul")


@matcher("Sub", "Div")
def sub_div(m: OnnxModel, node):
    patterns = (_hardswish, _hardsigmoid_form, channel_affine) if node.op_type == "Div" else (channel_affine,)
    for pattern in patterns:
        found = pattern(m, node)
        if found is not None:
            return found
    op = node.op_type.lower()
    require_op(op, node.op_type)
    return _merge(m, node, op)


def _relu6_of_plus_3(m: OnnxModel, tensor: str, user) -> tuple[list, str] | None:
    """Clip(Add(x, 3), 0, 6) read by `user` alone -> (its nodes, x)."""
    clip_node = single(m, tensor, user, "Clip")
    if clip_node is None:
        return None
    lo, hi = (scalar(m.const(clip_node.input[i])) if len(clip_node.input) > i and clip_node.input[i] else None
              for i in (1, 2))
    if lo != 0.0 or hi != 6.0:
        return None
    plus = single(m, clip_node.input[0], clip_node, "Add")
    if plus is None:
        return None
    for i in (0, 1):
        if scalar(m.const(plus.input[1 - i])) == 3.0 and not m.is_const(plus.input[i]):
            return [plus, clip_node], plus.input[i]
    return None


def _over_6(m: OnnxModel, node) -> tuple[str, list] | None:
    """Div(t, 6) or Mul(t, 1/6) -> (t, [node])."""
    if node.op_type == "Div" and _near(scalar(m.const(node.input[1])), 6.0):
        return node.input[0], [node]
    if node.op_type == "Mul":
        for i in (0, 1):
            if _near(scalar(m.const(node.input[1 - i])), 1 / 6):
                return node.input[i], [node]
    return None


def _near(value, want: float) -> bool:
    return value is not None and abs(value - want) <= 1e-6 * abs(want)


def _hardsigmoid_form(m: OnnxModel, node) -> Match | None:
    """clip(x + 3, 0, 6) / 6 (Div by 6 or Mul by 1/6) -> hardsigmoid (PyTorch's 1/6, 1/2)."""
    over = _over_6(m, node)
    if over is None:
        return None
    part = _relu6_of_plus_3(m, over[0], node)
    if part is None:
        return None
    return Match("hardsigmoid", {}, [part[1]], node.output[0], part[0] + [node])


def _hardswish(m: OnnxModel, node) -> Match | None:
    """x * clip(x + 3, 0, 6) / 6 with the Mul and the division in either order, and x * HardSigmoid(x) with
    PyTorch's (1/6, 1/2) -> hardswish."""
    over = _over_6(m, node)
    if over is not None:  # (x * clip(x + 3, 0, 6)) / 6
        inner = single(m, over[0], node, "Mul")
        if inner is not None:
            for i in (0, 1):
                part = _relu6_of_plus_3(m, inner.input[i], inner)
                if part is not None and part[1] == inner.input[1 - i]:
                    return Match("hardswish", {}, [part[1]], node.output[0], part[0] + [inner, node])
    if node.op_type != "Mul":
        return None
    for i in (0, 1):  # x * (clip(x + 3, 0, 6) / 6), x * HardSigmoid(x)
        gate = m.producer_of(node.input[i])
        if gate is None or not m.single_user(node.input[i], node):
            continue
        if gate.op_type in ("Div", "Mul"):
            sig = _hardsigmoid_form(m, gate)
            if sig is not None and sig.inputs[0] == node.input[1 - i]:
                return Match("hardswish", {}, sig.inputs, node.output[0], sig.nodes + [node])
        if gate.op_type == "HardSigmoid" and gate.input[0] == node.input[1 - i]:
            a = attrs_of(gate)
            if _near(a.get("alpha", 0.2), 1 / 6) and _near(a.get("beta", 0.5), 0.5):
                return Match("hardswish", {}, [gate.input[0]], node.output[0], [gate, node])
    return None


def _silu(m: OnnxModel, node) -> Match | None:
    for i in (0, 1):
        sig = single(m, node.input[i], node, "Sigmoid")
        if sig is not None and sig.input[0] == node.input[1 - i]:
            return Match("silu", {}, [sig.input[0]], node.output[0], [sig, node])
    return None


def _mish(m: OnnxModel, node) -> Match | None:
    for i in (0, 1):
        tanh = single(m, node.input[i], node, "Tanh")
        softplus = tanh and single(m, tanh.input[0], tanh, "Softplus")
        if softplus is not None and softplus.input[0] == node.input[1 - i]:
            require_op("mish", "x * tanh(softplus(x))")
            return Match("mish", {}, [node.input[1 - i]], node.output[0], [softplus, tanh, node])
    return None


def _gelu(m: OnnxModel, node) -> Match | None:
    """x * 0.5 * (1 + erf(x / sqrt(2))), in PyTorch's and cnncomp's orders of the multiplies."""
    def scaled(tensor, user, factor):  # Mul(x, factor) or Div(x, 1/factor) -> x
        for op_type, want in (("Mul", factor), ("Div", 1 / factor)):
            n = single(m, tensor, user, op_type)
            if n is not None:
                c = scalar(m.const(n.input[1]))
                if c is not None and abs(c - want) < 1e-4 * abs(want):
                    return n, n.input[0]
        return None, None

    def erf_part(tensor, user):  # 1 + erf(x/sqrt2) -> (nodes, x)
        plus = single(m, tensor, user, "Add")
        if plus is None:
            return None
        for i in (0, 1):
            erf = single(m, plus.input[i], plus, "Erf")
            if erf is not None and scalar(m.const(plus.input[1 - i])) == 1.0:
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
        inner = single(m, node.input[i], node, "Mul")
        if inner is not None and scalar(m.const(node.input[1 - i])) == 0.5:
            for j in (0, 1):
                part = erf_part(inner.input[j], inner)
                if part and part[1] == inner.input[1 - j]:
                    return Match("gelu", {}, [part[1]], node.output[0], part[0] + [inner, node])
    return None


@matcher("Clip")
def clip(m: OnnxModel, node):
    lo = scalar(const_input(m, node, 1, "minimum"))
    hi = scalar(const_input(m, node, 2, "maximum"))
    if lo == 0.0 and hi == 6.0:
        return Match("relu6", {}, [node.input[0]], node.output[0], [node])
    if lo == 0.0 and (hi is None or math.isinf(hi)):
        return Match("relu", {}, [node.input[0]], node.output[0], [node])
    require_op("clip", f"Clip({lo}, {hi})")
    args = {k: num(round_float(v)) for k, v in (("min", lo), ("max", hi)) if v is not None and not math.isinf(v)}
    return Match("clip", args, [node.input[0]], node.output[0], [node])


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
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if _near(alpha, 1 / 6) and _near(beta, 0.5):
        return Match("hardsigmoid", {}, [node.input[0]], node.output[0], [node])
    if not has_param("hardsigmoid", "alpha"):
        raise Unsupported(f"HardSigmoid(alpha={alpha}, beta={beta}) is not PyTorch's hardsigmoid (1/6, 1/2)")
    return Match("hardsigmoid", {"alpha": num(round_float(alpha)), "beta": num(round_float(beta))},
                 [node.input[0]], node.output[0], [node])


@matcher("Gelu")
def gelu_op(m: OnnxModel, node):
    approximate = attrs_of(node).get("approximate", "none")
    args = {}
    if approximate != "none":
        if not has_param("gelu", "approximate"):
            raise Unsupported("Gelu(approximate=tanh) maps to gelu(approximate=\"tanh\"), not registered yet")
        args["approximate"] = approximate
    return Match("gelu", args, [node.input[0]], node.output[0], [node])


@matcher("Elu")
def elu(m: OnnxModel, node):
    alpha = float(attrs_of(node).get("alpha", 1.0))
    return Match("elu", {"alpha": num(round_float(alpha))}, [node.input[0]], node.output[0], [node])


@matcher("LeakyRelu")
def leaky_relu(m: OnnxModel, node):
    alpha = float(attrs_of(node).get("alpha", 0.01))
    return Match("leaky_relu", {"a": round_float(alpha)}, [node.input[0]], node.output[0], [node])


@matcher("PRelu")
def prelu(m: OnnxModel, node):
    slope = const_input(m, node, 1, "slope")
    shape = m.shapes.get(node.input[0])
    channels = shape[1] if shape and len(shape) > 1 else None
    if slope.size == 1 or (slope.size == channels and slope.reshape(-1).size == slope.shape[0]):
        return Match("prelu", {"shared": slope.size == 1 and channels != 1}, [node.input[0]], node.output[0],
                     [node], {"weight": slope.reshape(-1).copy()})
    if slope.size == channels and shape is not None and channel_vector(m, node.input[0], slope) is not None:
        return Match("prelu", {}, [node.input[0]], node.output[0], [node], {"weight": slope.reshape(-1).copy()})
    if not has_param("prelu", "shape"):
        raise Unsupported(f"a PRelu slope of shape {list(slope.shape)} is not one per channel or shared")
    dims = list(slope.shape)
    while dims and dims[0] == 1 and shape is not None and len(dims) > len(shape) - 1:
        dims.pop(0)  # the batch's 1: prelu(shape=) leaves the batch out
    return Match("prelu", {"shape": tuple(dims)}, [node.input[0]], node.output[0], [node],
                 {"weight": slope.reshape(dims).copy()})


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
