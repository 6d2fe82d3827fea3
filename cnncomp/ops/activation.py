"""Point-wise activations: the shape is the input's, no MACs."""

from __future__ import annotations

import math

from cnncomp.errors import CnnError
from cnncomp.ops.registry import Op, Param, WeightSpec, check_channels, normalize_axis, register


class _Pointwise(Op):
    min_rank = 1
    category = "act"
    keeps_grid = True

    def infer_shape(self, attrs, shapes):
        return tuple(shapes[0])


def _simple(name: str, onnx_op: str, torch_fn: str, doc: str, **onnx_attrs):
    """An activation that is one ONNX op and one torch.nn.functional call."""

    def to_onnx(self, b, layer, inputs, weights):
        return b.node(onnx_op, [inputs[0]], layer.name, **onnx_attrs)

    def torch_ref(self, attrs, inputs, weights):
        import torch
        import torch.nn.functional as F

        fn = getattr(F, torch_fn, None) or getattr(torch, torch_fn)
        return fn(inputs[0])

    cls = type(name.title().replace("_", ""), (_Pointwise,),
               {"name": name, "doc": doc, "to_onnx": to_onnx, "torch_ref": torch_ref})
    register(cls)
    return cls


# name       ONNX op        torch function  doc
_simple("relu", "Relu", "relu", "max(x, 0)")
_simple("sigmoid", "Sigmoid", "sigmoid", "1 / (1 + exp(-x))")
_simple("tanh", "Tanh", "tanh", "hyperbolic tangent")
_simple("hardsigmoid", "HardSigmoid", "hardsigmoid", "clip(x/6 + 1/2, 0, 1)", alpha=1.0 / 6, beta=0.5)
_simple("hardswish", "HardSwish", "hardswish", "x * hardsigmoid(x)")


@register
class Silu(_Pointwise):
    name = "silu"
    doc = "x * sigmoid(x)"

    def to_onnx(self, b, layer, inputs, weights):
        s = b.node("Sigmoid", [inputs[0]], b.fresh(layer.name + "/sigmoid"))
        return b.node("Mul", [inputs[0], s], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        import torch

        x = inputs[0]
        return x * torch.sigmoid(x)


@register
class Gelu(_Pointwise):
    name = "gelu"
    doc = "x * Phi(x), the exact (erf) form"

    def to_onnx(self, b, layer, inputs, weights):
        x = inputs[0]
        dtype = layer.dtype
        scaled = b.node("Mul", [x, b.const_scalar(1 / math.sqrt(2), dtype)], b.fresh(layer.name + "/scaled"))
        erf = b.node("Erf", [scaled], b.fresh(layer.name + "/erf"))
        one_plus = b.node("Add", [erf, b.const_scalar(1.0, dtype)], b.fresh(layer.name + "/one_plus"))
        half_x = b.node("Mul", [x, b.const_scalar(0.5, dtype)], b.fresh(layer.name + "/half_x"))
        return b.node("Mul", [half_x, one_plus], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        return F.gelu(inputs[0])


@register
class Elu(_Pointwise):
    name = "elu"
    params = (Param("alpha", "number", 1.0),)
    doc = "x if x > 0 else alpha * (exp(x) - 1)"

    def to_onnx(self, b, layer, inputs, weights):
        return b.node("Elu", [inputs[0]], layer.name, alpha=float(layer.attrs["alpha"]))

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        return F.elu(inputs[0], alpha=float(attrs["alpha"]))


@register
class Relu6(_Pointwise):
    name = "relu6"
    doc = "clip(x, 0, 6)"

    def to_onnx(self, b, layer, inputs, weights):
        lo, hi = b.const_scalar(0.0, layer.dtype), b.const_scalar(6.0, layer.dtype)
        return b.node("Clip", [inputs[0], lo, hi], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        return inputs[0].clamp(0.0, 6.0)


def _leaky_onnx(b, layer, inputs, slope: float) -> str:
    return b.node("LeakyRelu", [inputs[0]], layer.name, alpha=float(slope))


@register
class LeakyRelu(_Pointwise):
    name = "leaky_relu"
    params = (Param("a", "number", 0.01),)
    doc = "x if x > 0 else a * x"

    def to_onnx(self, b, layer, inputs, weights):
        return _leaky_onnx(b, layer, inputs, layer.attrs["a"])

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        return F.leaky_relu(inputs[0], float(attrs["a"]))


@register
class RRelu(_Pointwise):
    name = "rrelu"
    params = (Param("lower", "number", 1 / 8), Param("upper", "number", 1 / 3))
    doc = "randomized leaky ReLU, inference form: slope (lower + upper) / 2"

    def normalize(self, args, shapes):
        if not 0 <= args["lower"] <= args["upper"]:
            raise CnnError(f"rrelu: needs 0 <= lower <= upper, got lower={args['lower']}, upper={args['upper']}")
        return dict(args)

    def to_onnx(self, b, layer, inputs, weights):
        return _leaky_onnx(b, layer, inputs, (layer.attrs["lower"] + layer.attrs["upper"]) / 2)

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        return F.rrelu(inputs[0], float(attrs["lower"]), float(attrs["upper"]), training=False)

    def torch_train(self, attrs, inputs, weights):
        import torch.nn.functional as F

        return F.rrelu(inputs[0], float(attrs["lower"]), float(attrs["upper"]), training=True)


@register
class PRelu(_Pointwise):
    name = "prelu"
    params = (Param("shared", "bool", False),)
    min_rank = 2
    doc = "leaky ReLU with a learned slope per channel (one if shared)"

    def normalize(self, args, shapes):
        channels = 1 if args["shared"] else check_channels(shapes[0], self.name)
        return {"shared": bool(args["shared"]), "channels": channels}

    def weight_specs(self, attrs, shapes):
        return {"weight": WeightSpec((attrs["channels"],), init="prelu")}

    def to_onnx(self, b, layer, inputs, weights):
        rank = len(layer.shape)
        slope = b.const_reshaped(weights["weight"], (layer.attrs["channels"],) + (1,) * (rank - 2))
        return b.node("PRelu", [inputs[0], slope], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        return F.prelu(inputs[0], weights["weight"])


class _SoftmaxBase(_Pointwise):
    params = (Param("axis", "int", 1),)
    keeps_grid = False  # along a spatial axis every output reads the whole axis
    onnx_op = ""

    def normalize(self, args, shapes):
        return {"axis": normalize_axis(self.name, args["axis"], len(shapes[0]))}

    def to_onnx(self, b, layer, inputs, weights):
        return b.node(self.onnx_op, [inputs[0]], layer.name, axis=layer.attrs["axis"])


@register
class Softmax(_SoftmaxBase):
    name = "softmax"
    onnx_op = "Softmax"
    doc = "softmax along axis"

    def torch_ref(self, attrs, inputs, weights):
        return inputs[0].softmax(attrs["axis"])


@register
class LogSoftmax(_SoftmaxBase):
    name = "log_softmax"
    onnx_op = "LogSoftmax"
    doc = "log of softmax along axis"

    def torch_ref(self, attrs, inputs, weights):
        return inputs[0].log_softmax(attrs["axis"])
