"""Point-wise activations: the shape is the input's, no MACs."""

from __future__ import annotations

import math

from cnncomp.errors import CnnError
from cnncomp.ops.registry import (
    Op, Param, WeightSpec, check_channels, fmt_shape, fmt_value, normalize_axis, positive_ints, register,
)


class _Pointwise(Op):
    min_rank = 1
    category = "act"
    keeps_grid = True

    def infer_shape(self, attrs, shapes):
        return tuple(shapes[0])


def _simple(name: str, onnx_op: str, torch_fn: str, doc: str, **onnx_attrs):
    """An activation that is one ONNX op and one torch.nn.functional call."""

    def torch_source(self, s):
        # F.sigmoid and F.tanh are deprecated aliases of torch.sigmoid and torch.tanh
        return s.function(f"torch.{torch_fn}" if torch_fn in ("sigmoid", "tanh") else f"F.{torch_fn}")

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
    cls.torch_source = torch_source
    return cls


# name       ONNX op        torch function  doc
_simple("relu", "Relu", "relu", "max(x, 0)")
_simple("sigmoid", "Sigmoid", "sigmoid", "1 / (1 + exp(-x))")
_simple("tanh", "Tanh", "tanh", "hyperbolic tangent")
_simple("hardswish", "HardSwish", "hardswish", "x * hardsigmoid(x)")


@register
class HardSigmoid(_Pointwise):
    """clip(alpha * x + beta, 0, 1). The defaults are PyTorch's (1/6, 1/2); ONNX's HardSigmoid defaults
    to alpha 0.2 (PaddlePaddle's and Keras's), so the lowering always writes both attributes."""

    name = "hardsigmoid"
    params = (Param("alpha", "number", 1 / 6), Param("beta", "number", 0.5))
    doc = "clip(alpha * x + beta, 0, 1): PyTorch's alpha=1/6, beta=0.5 by default"

    def normalize(self, args, shapes):
        return {"alpha": float(args["alpha"]), "beta": float(args["beta"])}

    def to_onnx(self, b, layer, inputs, weights):
        a = layer.attrs
        return b.node("HardSigmoid", [inputs[0]], layer.name, alpha=a["alpha"], beta=a["beta"])

    def torch_ref(self, attrs, inputs, weights):
        return (inputs[0] * attrs["alpha"] + attrs["beta"]).clamp(0.0, 1.0)

    def torch_source(self, s):
        if not s.given("alpha") and not s.given("beta"):
            return s.function("F.hardsigmoid")
        return s.function(s.helper("hardsigmoid"), *s.written())


@register
class Clip(_Pointwise):
    """min(max(x, min), max); a bound left out does not clip (with neither, clip is the identity)."""

    name = "clip"
    params = (Param("min", "number", None), Param("max", "number", None))
    doc = "clamp to [min, max]; a bound left out does not clip (relu6 is clip(min=0, max=6))"

    def normalize(self, args, shapes):
        lo, hi = args.get("min"), args.get("max")
        if lo is not None and hi is not None and lo > hi:
            raise CnnError(f"clip: min={lo} is larger than max={hi}")
        return {"min": None if lo is None else float(lo), "max": None if hi is None else float(hi)}

    def spec_args(self, attrs):
        return {k: attrs[k] for k in ("min", "max") if attrs.get(k) is not None}

    def to_onnx(self, b, layer, inputs, weights):
        bounds = [b.const_scalar(layer.attrs[k], layer.dtype) if layer.attrs.get(k) is not None else ""
                  for k in ("min", "max")]
        while bounds and bounds[-1] == "":
            bounds.pop()
        return b.node("Clip", [inputs[0], *bounds], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        if attrs.get("min") is None and attrs.get("max") is None:
            return inputs[0]
        return inputs[0].clamp(attrs.get("min"), attrs.get("max"))

    def torch_source(self, s):
        if not s.given("min") and not s.given("max"):
            return s.unchanged()
        return s.function("torch.clamp", *s.written())


@register
class Neg(_Pointwise):
    name = "neg"
    doc = "-x"

    def to_onnx(self, b, layer, inputs, weights):
        return b.node("Neg", [inputs[0]], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        return -inputs[0]

    def torch_source(self, s):
        return s.function("torch.neg")


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

    def torch_source(self, s):
        return s.function("F.silu")


@register
class Gelu(_Pointwise):
    """x * Phi(x). approximate="tanh" is PyTorch's tanh form:
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))."""

    name = "gelu"
    params = (Param("approximate", "str", "none", ("none", "tanh")),)
    doc = "x * Phi(x): the exact (erf) form, or approximate=\"tanh\""

    def to_onnx(self, b, layer, inputs, weights):
        # Written out (ONNX's Gelu op needs opset 20).
        x = inputs[0]
        dtype = layer.dtype
        if layer.attrs.get("approximate", "none") == "tanh":
            cube = b.node("Mul", [x, b.node("Mul", [x, x], b.fresh(layer.name + "/square"))],
                          b.fresh(layer.name + "/cube"))
            inner = b.node("Add", [x, b.node("Mul", [cube, b.const_scalar(0.044715, dtype)],
                                             b.fresh(layer.name + "/cube_scaled"))], b.fresh(layer.name + "/inner"))
            scaled = b.node("Mul", [inner, b.const_scalar(math.sqrt(2 / math.pi), dtype)],
                            b.fresh(layer.name + "/scaled"))
            curve = b.node("Tanh", [scaled], b.fresh(layer.name + "/tanh"))
        else:
            scaled = b.node("Mul", [x, b.const_scalar(1 / math.sqrt(2), dtype)], b.fresh(layer.name + "/scaled"))
            curve = b.node("Erf", [scaled], b.fresh(layer.name + "/erf"))
        one_plus = b.node("Add", [curve, b.const_scalar(1.0, dtype)], b.fresh(layer.name + "/one_plus"))
        half_x = b.node("Mul", [x, b.const_scalar(0.5, dtype)], b.fresh(layer.name + "/half_x"))
        return b.node("Mul", [half_x, one_plus], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        return F.gelu(inputs[0], approximate=attrs.get("approximate", "none"))

    def torch_source(self, s):
        return s.function("F.gelu", *([f"approximate={s.arg('approximate')}"] if s.given("approximate") else []))


@register
class Selu(_Pointwise):
    name = "selu"
    doc = "scale * (x if x > 0 else alpha * (exp(x) - 1)), PyTorch's (and ONNX's) alpha and scale"

    def to_onnx(self, b, layer, inputs, weights):
        return b.node("Selu", [inputs[0]], layer.name)  # ONNX's defaults are PyTorch's constants

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        return F.selu(inputs[0])

    def torch_source(self, s):
        return s.function("F.selu")


@register
class Mish(_Pointwise):
    name = "mish"
    doc = "x * tanh(softplus(x))"

    def to_onnx(self, b, layer, inputs, weights):
        # Written out (ONNX's Mish op needs opset 18).
        soft = b.node("Softplus", [inputs[0]], b.fresh(layer.name + "/softplus"))
        curve = b.node("Tanh", [soft], b.fresh(layer.name + "/tanh"))
        return b.node("Mul", [inputs[0], curve], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        return F.mish(inputs[0])

    def torch_source(self, s):
        return s.function("F.mish")


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

    def torch_source(self, s):
        return s.function("F.elu", *s.args(["alpha"]))


@register
class Relu6(_Pointwise):
    name = "relu6"
    doc = "clip(x, 0, 6)"

    def to_onnx(self, b, layer, inputs, weights):
        lo, hi = b.const_scalar(0.0, layer.dtype), b.const_scalar(6.0, layer.dtype)
        return b.node("Clip", [inputs[0], lo, hi], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        return inputs[0].clamp(0.0, 6.0)

    def torch_source(self, s):
        return s.function("F.relu6")


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

    def torch_source(self, s):
        return s.function("F.leaky_relu", *s.args(["a"]))


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

    def torch_source(self, s):
        return s.function("F.rrelu", *s.args(["lower", "upper"]))  # training=False: the mean slope, as torch_ref


@register
class PRelu(_Pointwise):
    """x if x >= 0 else slope * x. The slope is per channel by default (nn.PReLU's [C]), one in all if
    shared, or any shape that broadcasts against the input without its batch (`shape=(C, 1, 1)`,
    `(1, 1, W)`, `(C, H, W)`: aligned from the right, as ONNX PRelu's slope)."""

    name = "prelu"
    params = (Param("shared", "bool", False), Param("shape", "ints", None))
    min_rank = 2
    doc = "leaky ReLU with a learned slope per channel (one if shared, or of a broadcasting shape=)"

    def normalize(self, args, shapes):
        x = shapes[0]
        if args.get("shape") is None:
            channels = 1 if args["shared"] else check_channels(x, self.name)
            return {"shared": bool(args["shared"]), "channels": channels}
        if args["shared"]:
            raise CnnError("prelu: give shared=true or shape=, not both")
        shape = args["shape"] if isinstance(args["shape"], tuple) else (args["shape"],)
        positive_ints(shape, "prelu: shape")
        if len(shape) > len(x) - 1:
            raise CnnError(f"prelu: shape {fmt_value(shape)} has more dims than the input {fmt_shape(x)} "
                           "without its batch")
        for d, n in zip(reversed(shape), reversed(x)):
            if d != 1 and d != n:
                raise CnnError(f"prelu: shape {fmt_value(shape)} does not broadcast against {fmt_shape(x)}")
        return {"shared": False, "shape": shape}

    def spec_args(self, attrs):
        return {"shape": attrs["shape"]} if "shape" in attrs else {"shared": attrs["shared"]}

    def weight_specs(self, attrs, shapes):
        return {"weight": WeightSpec(attrs.get("shape") or (attrs["channels"],), init="prelu")}

    def to_onnx(self, b, layer, inputs, weights):
        if "shape" in layer.attrs:
            return b.node("PRelu", [inputs[0], weights["weight"]], layer.name)
        rank = len(layer.shape)
        slope = b.const_reshaped(weights["weight"], (layer.attrs["channels"],) + (1,) * (rank - 2))
        return b.node("PRelu", [inputs[0], slope], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        import torch
        import torch.nn.functional as F

        if "shape" not in attrs:
            return F.prelu(inputs[0], weights["weight"])
        x = inputs[0]
        return torch.where(x >= 0, x, x * weights["weight"])

    def torch_source(self, s):
        return s.module()


class _SoftmaxBase(_Pointwise):
    params = (Param("axis", "int", 1),)
    keeps_grid = False  # along a spatial axis every output reads the whole axis
    onnx_op = ""

    def normalize(self, args, shapes):
        return {"axis": normalize_axis(self.name, args["axis"], len(shapes[0]))}

    def to_onnx(self, b, layer, inputs, weights):
        return b.node(self.onnx_op, [inputs[0]], layer.name, axis=layer.attrs["axis"])

    def decision_axis(self, attrs, rank):
        return attrs["axis"]  # class probabilities (or their logs) along the axis

    def torch_source(self, s):
        return s.function(f"F.{self.name}", *s.args(["axis"], write_defaults=True))  # F.softmax warns without dim


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
