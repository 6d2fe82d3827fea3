"""Merges with a constant operand: a conv's separate bias, and per-channel scales and shifts.

    Add(Conv(x), c), Add(ConvTranspose(x), c), c one per channel  -> conv / conv_transpose with bias (+ c)
    Mul(linear(x), c), c along the last axis                      -> linear with its rows scaled by c
    Mul(x, c), Div(x, c), c one per channel or a scalar           -> scale (weight c, or 1 / c)
    Add(x, c), Sub(x, c), c one per channel or a scalar           -> shift (bias c, or -c)

"One per channel" is a constant that broadcasts against x = [N, C, ...] along the channel axis only:
[C, 1, 1], [1, C, 1, 1], or [C] when x is [N, C]. A scalar broadcasts to a vector of C equal values.
Folding a constant into a conv's or a linear's weights is exact in real numbers; in float32 it rounds
the product once (a relative change of about 1e-7).
"""

from __future__ import annotations

import numpy as np

from cnncomp.frontend.onnx.model import OnnxModel
from cnncomp.frontend.onnx.patterns.base import Match, Unsupported, require_op, single


def channel_vector(m: OnnxModel, x: str, c: np.ndarray) -> np.ndarray | None:
    """The constant `c` as one value per channel of `x` ([C]), if it broadcasts along the channel axis only."""
    shape = m.shapes.get(x)
    if shape is None or len(shape) < 2 or not isinstance(shape[1], int) or c.ndim > len(shape):
        return None
    channels = shape[1]
    full = (1,) * (len(shape) - c.ndim) + tuple(c.shape)
    if any(d != 1 for i, d in enumerate(full) if i != 1) or full[1] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float32)


def _const_operand(m: OnnxModel, node) -> tuple[str, np.ndarray, int] | None:
    """(the tensor operand, the constant, the constant's input slot) of a two-input merge, if one is constant."""
    a, b = node.input[0], node.input[1]
    if m.is_const(b) and not m.is_const(a):
        return a, m.const(b), 1
    if m.is_const(a) and not m.is_const(b):
        return b, m.const(a), 0
    return None


def conv_bias(m: OnnxModel, node) -> Match | None:
    """Add(Conv(x), c) or Add(ConvTranspose(x), c), c one per channel -> the conv with c added to its bias."""
    from cnncomp.frontend.onnx.patterns.conv import conv, conv_transpose

    found = _const_operand(m, node)
    if found is None:
        return None
    x, c, _ = found
    for op_type, build in (("Conv", conv), ("ConvTranspose", conv_transpose)):
        producer = single(m, x, node, op_type)
        if producer is None:
            continue
        vector = channel_vector(m, x, c)
        if vector is None:
            return None
        try:
            match = build(m, producer)
        except Unsupported:
            return None
        match.weights["bias"] = match.weights.get("bias", np.zeros_like(vector)) + vector
        match.args["bias"] = True
        match.nodes.insert(0, node)  # the conv stays the anchor: the layer keeps its name
        match.output = node.output[0]
        return match
    return None


def scaled_linear(m: OnnxModel, node) -> Match | None:
    """Mul(linear(x), c) with c along the last (output) axis, the linear a Gemm or MatMul [+ Add] read by the
    Mul alone -> the linear with weight rows and bias scaled by c (timm's layer scale after an MLP)."""
    from cnncomp.frontend.onnx.patterns import MATCHERS

    found = _const_operand(m, node)
    if found is None:
        return None
    x, c, _ = found
    producer = m.producer_of(x)
    if producer is None or producer.op_type not in ("Gemm", "MatMul", "Add") or not m.single_user(x, node):
        return None
    linear = None
    for match in MATCHERS.get(producer.op_type, []):
        try:
            linear = match(m, producer)
        except Unsupported:
            linear = None
        if linear is not None:
            break
    if not isinstance(linear, Match) or linear.op != "linear":
        return None
    out = linear.args["out"]
    if c.size not in (1, out) or (c.size == out and c.shape[-1] != out):
        return None
    gain = np.broadcast_to(c.reshape(-1), (out,)).astype(np.float64)
    linear.weights["weight"] = (linear.weights["weight"].astype(np.float64) * gain[:, None]).astype(np.float32)
    if "bias" in linear.weights:
        linear.weights["bias"] = (linear.weights["bias"].astype(np.float64) * gain).astype(np.float32)
    linear.nodes.insert(0, node)  # the linear stays the anchor: the layer keeps its name
    linear.output = node.output[0]
    return linear


def channel_affine(m: OnnxModel, node) -> Match | None:
    """Mul/Div/Add/Sub of a tensor and a constant one per channel (or a scalar) -> scale or shift; None when
    neither operand is a constant; Unsupported when the constant has another shape."""
    found = _const_operand(m, node)
    if found is None:
        return None
    x, c, slot = found
    if node.op_type in ("Sub", "Div") and slot == 0:
        raise Unsupported(f"a constant {'minus' if node.op_type == 'Sub' else 'divided by'} a tensor has no "
                          "layer (x - c and x / c are shift and scale)")
    vector = channel_vector(m, x, c)
    if vector is None:
        shape = m.shapes.get(x)
        raise Unsupported(f"{node.op_type} with a constant of shape {list(c.shape)} on a tensor of shape "
                          f"{list(shape) if shape else 'unknown'}: only one per channel or a scalar is a layer "
                          "(scale, shift)")
    if node.op_type in ("Mul", "Div"):
        require_op("scale", f"{node.op_type} by a constant")
        weight = vector if node.op_type == "Mul" else (1.0 / vector.astype(np.float64)).astype(np.float32)
        return Match("scale", {}, [x], node.output[0], [node], {"weight": weight})
    require_op("shift", f"{node.op_type} of a constant")
    return Match("shift", {}, [x], node.output[0], [node], {"bias": vector if node.op_type == "Add" else -vector})
