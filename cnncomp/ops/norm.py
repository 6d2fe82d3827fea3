"""Normalization layers: bn (batch norm, inference form), gn (group norm)."""

from __future__ import annotations

from cnncomp.errors import CnnError
from cnncomp.ops.registry import Op, Param, WeightSpec, check_channels, register


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
