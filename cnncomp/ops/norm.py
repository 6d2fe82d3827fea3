"""Normalization layers: bn (batch norm, inference form), gn (group norm), layer_norm, and the per-channel
affine layers scale and shift."""

from __future__ import annotations

from cnncomp.errors import CnnError
from cnncomp.ops.registry import Op, Param, WeightSpec, check_channels, normalize_axes, register


@register
class BatchNorm(Op):
    name = "bn"
    params = (Param("eps", "number", 1e-5),)
    category = "norm"
    keeps_grid = True
    doc = "batch norm, inference form: (x - running_mean) / sqrt(running_var + eps) * weight + bias"

    def normalize(self, args, shapes):
        if args["eps"] <= 0:
            raise CnnError(f"bn: eps must be positive, got {args['eps']}")
        return {"eps": float(args["eps"]), "channels": check_channels(shapes[0], self.name)}

    def infer_shape(self, attrs, shapes):
        return tuple(shapes[0])

    def weight_specs(self, attrs, shapes):
        c = (attrs["channels"],)
        return {"weight": WeightSpec(c, init="bn_weight"), "bias": WeightSpec(c, init="bn_bias"),
                "running_mean": WeightSpec(c, learnable=False, init="bn_mean"),
                "running_var": WeightSpec(c, learnable=False, init="bn_var")}

    def to_onnx(self, b, layer, inputs, weights):
        return b.node("BatchNormalization", [inputs[0], weights["weight"], weights["bias"], weights["running_mean"],
                                             weights["running_var"]], layer.name, epsilon=layer.attrs["eps"])

    def torch_ref(self, attrs, inputs, weights):
        x = inputs[0]
        view = (1, -1) + (1,) * (x.dim() - 2)
        inv = (weights["running_var"] + attrs["eps"]).rsqrt().reshape(view)
        return (x - weights["running_mean"].reshape(view)) * inv * weights["weight"].reshape(view) \
            + weights["bias"].reshape(view)

    def torch_train(self, attrs, inputs, weights):
        # batch statistics, and the running ones updated in place as nn.BatchNorm does (momentum 0.1)
        import torch.nn.functional as F

        return F.batch_norm(inputs[0], weights["running_mean"], weights["running_var"], weights["weight"],
                            weights["bias"], training=True, momentum=0.1, eps=attrs["eps"])

    def torch_source(self, s):
        return s.module()


@register
class GroupNorm(Op):
    name = "gn"
    params = (Param("groups", "int"), Param("eps", "number", 1e-5))
    category = "norm"
    keeps_grid = True  # its statistics span the whole map, but each output reads its own position
    spatial_only = True
    doc = "group norm: normalize each group of channels over the group and the spatial dims"

    def normalize(self, args, shapes):
        c = check_channels(shapes[0], self.name)
        g = args["groups"]
        if g < 1 or c % g:
            raise CnnError(f"gn: groups={g} does not divide the {c} channels")
        if args["eps"] <= 0:
            raise CnnError(f"gn: eps must be positive, got {args['eps']}")
        return {"groups": g, "eps": float(args["eps"]), "channels": c}

    def infer_shape(self, attrs, shapes):
        return tuple(shapes[0])

    def weight_specs(self, attrs, shapes):
        c = (attrs["channels"],)
        return {"weight": WeightSpec(c, init="bn_weight"), "bias": WeightSpec(c, init="bn_bias")}

    def to_onnx(self, b, layer, inputs, weights):
        # GroupNormalization needs opset 18 (and changed in 21); InstanceNormalization over
        # [N, G, -1] is the same computation in every opset.
        a, x = layer.attrs, inputs[0]
        g, rank = a["groups"], len(layer.shape)
        grouped = b.node("Reshape", [x, b.const_int64([0, g, -1], layer.name + "/grouped_shape")],
                         b.fresh(layer.name + "/grouped"))
        normed = b.node("InstanceNormalization",
                        [grouped, b.const_filled(1.0, (g,), layer.dtype, layer.name + "/ones"),
                         b.const_filled(0.0, (g,), layer.dtype, layer.name + "/zeros")],
                        b.fresh(layer.name + "/normed"), epsilon=a["eps"])
        shape = b.node("Shape", [x], b.fresh(layer.name + "/shape"))
        back = b.node("Reshape", [normed, shape], b.fresh(layer.name + "/ungrouped"))
        view = (a["channels"],) + (1,) * (rank - 2)
        scaled = b.node("Mul", [back, b.const_reshaped(weights["weight"], view)], b.fresh(layer.name + "/scaled"))
        return b.node("Add", [scaled, b.const_reshaped(weights["bias"], view)], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        x = inputs[0]
        n, c = x.shape[:2]
        grouped = x.reshape(n, attrs["groups"], -1)
        mean = grouped.mean(-1, keepdim=True)
        var = grouped.var(-1, unbiased=False, keepdim=True)
        normed = ((grouped - mean) / (var + attrs["eps"]).sqrt()).reshape(x.shape)
        view = (1, c) + (1,) * (x.dim() - 2)
        return normed * weights["weight"].reshape(view) + weights["bias"].reshape(view)

    def torch_source(self, s):
        return s.module()


def _affine_view(shape: tuple, axes: tuple) -> tuple:
    """The shape that broadcasts a tensor over `axes` of an input of `shape` against that input, batch left out."""
    return tuple(d if i in axes else 1 for i, d in enumerate(shape) if i > 0)


@register
class LayerNorm(Op):
    """Layer norm over `axes`: (x - mean) / sqrt(var + eps) * weight + bias, the mean and the (biased)
    variance taken over `axes` at each position of the other axes; weight and bias have the
    normalized shape. axes=1 on [N, C, H, W] is ConvNeXt's LayerNorm2d (over channels at each
    pixel); trailing axes are nn.LayerNorm. Lowered as LayerNormalization (opset 17), between two
    Transposes where the axes are not trailing."""

    name = "layer_norm"
    params = (Param("axes", "ints", 1), Param("eps", "number", 1e-5))
    category = "norm"
    doc = "layer norm over axes (1: channels, ConvNeXt's LayerNorm2d; or trailing axes, nn.LayerNorm)"

    def normalize(self, args, shapes):
        shape = shapes[0]
        axes = normalize_axes(self.name, args["axes"], len(shape))
        for a in axes:
            if not isinstance(shape[a], int):
                raise CnnError(f"layer_norm: the normalized axis {a} has a dynamic size '{shape[a]}'")
        if args["eps"] <= 0:
            raise CnnError(f"layer_norm: eps must be positive, got {args['eps']}")
        return {"axes": axes, "eps": float(args["eps"]), "normalized_shape": tuple(shape[a] for a in axes)}

    def spec_args(self, attrs):
        axes = attrs["axes"]
        return {"axes": axes[0] if len(axes) == 1 else axes, "eps": attrs["eps"]}

    def infer_shape(self, attrs, shapes):
        return tuple(shapes[0])

    def weight_specs(self, attrs, shapes):
        shape = attrs["normalized_shape"]
        return {"weight": WeightSpec(shape, init="bn_weight"), "bias": WeightSpec(shape, init="bn_bias")}

    def to_onnx(self, b, layer, inputs, weights):
        # LayerNormalization normalizes trailing axes (its epsilon an attribute, its statistics in float32 for
        # a float16 input); other axes (1: a channel norm) are moved to the back and the result moved back
        a, x, rank = layer.attrs, inputs[0], len(layer.shape)
        axes = a["axes"]
        b.require_opset(17, "layer_norm (LayerNormalization)")
        ins = [x, weights["weight"], weights["bias"]]
        if axes == tuple(range(axes[0], rank)):
            return b.node("LayerNormalization", ins, layer.name, axis=axes[0], epsilon=a["eps"])
        perm = [i for i in range(rank) if i not in axes] + list(axes)
        ins[0] = b.node("Transpose", [x], b.fresh(layer.name + "/axes_last"), perm=perm)
        normed = b.node("LayerNormalization", ins, b.fresh(layer.name + "/normed"), axis=rank - len(axes),
                        epsilon=a["eps"])
        return b.node("Transpose", [normed], layer.name, perm=[perm.index(i) for i in range(rank)])

    def torch_ref(self, attrs, inputs, weights):
        # written from the definition, not with F.layer_norm
        x, axes = inputs[0], attrs["axes"]
        mean = x.mean(dim=axes, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
        view = _affine_view(tuple(x.shape), axes)
        return (x - mean) / (var + attrs["eps"]).sqrt() * weights["weight"].reshape(view) \
            + weights["bias"].reshape(view)

    def torch_source(self, s):
        return s.module()


class _ChannelAffine(Op):
    """x * weight[c] or x + bias[c] along the channel axis (1): a constant scale or shift per channel."""

    min_rank = 2
    category = "norm"
    keeps_grid = True
    weight_name = ""  # its one weight: weight (scale) or bias (shift)
    init = ""
    onnx_op = ""  # Mul or Add
    combine = None  # the same in torch: torch.mul, torch.add

    def normalize(self, args, shapes):
        return {"channels": check_channels(shapes[0], self.name)}

    def spec_args(self, attrs):
        return {}

    def infer_shape(self, attrs, shapes):
        return tuple(shapes[0])

    def weight_specs(self, attrs, shapes):
        return {self.weight_name: WeightSpec((attrs["channels"],), init=self.init)}

    def to_onnx(self, b, layer, inputs, weights):
        vector = b.const_reshaped(weights[self.weight_name],
                                  (layer.attrs["channels"],) + (1,) * (len(layer.shape) - 2))
        return b.node(self.onnx_op, [inputs[0], vector], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        x = inputs[0]
        return type(self).combine(x, weights[self.weight_name].reshape((1, -1) + (1,) * (x.dim() - 2)))

    def constant_affine(self, attrs, weights):
        import numpy as np

        vector = np.asarray(weights[self.weight_name], np.float64)
        if self.onnx_op == "Mul":
            return vector, np.zeros_like(vector)
        return np.ones_like(vector), vector

    def torch_source(self, s):
        return s.module()


def _channel_affine(name: str, weight_name: str, init: str, onnx_op: str, torch_fn: str, doc: str) -> None:
    def combine(x, vector):
        import torch

        return getattr(torch, torch_fn)(x, vector)

    register(type(name.title(), (_ChannelAffine,), {
        "name": name, "weight_name": weight_name, "init": init, "onnx_op": onnx_op, "doc": doc,
        "combine": staticmethod(combine)}))


# name     weight    initializer  ONNX   torch  doc
_channel_affine("scale", "weight", "bn_weight", "Mul", "mul",
                "per-channel multiply by a learned vector weight [C] (layer scale, a constant Mul after a conv)")
_channel_affine("shift", "bias", "bn_bias", "Add", "add",
                "per-channel add of a learned vector bias [C] (a constant Add after a conv)")
