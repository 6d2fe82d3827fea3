"""Convolutions and dense layers: conv, conv_transpose, deform_conv, linear."""

from __future__ import annotations

import math

from cnncomp.errors import CnnError
from cnncomp.ops import dims
from cnncomp.ops.dims import is_static
from cnncomp.ops.registry import (
    Op, Param, WeightSpec, Window, as_tuple, check_channels, compact, numel, padding_arg, positive_ints, register,
    resolve_padding, sliding_window_step, spatial_rank, window_output,
)

_CONV_PARAMS = (
    Param("out", "int"), Param("k", "spatial"), Param("s", "spatial", 1), Param("p", "padding", 0),
    Param("d", "spatial", 1), Param("g", "int", 1), Param("bias", "bool", True),
)


def _conv_attrs(op_name: str, args: dict, shape: tuple) -> dict:
    rank = spatial_rank(shape)
    cin = check_channels(shape, op_name)
    out, groups = args["out"], args["g"]
    if out < 1:
        raise CnnError(f"{op_name}: out must be positive, got {out}")
    if groups < 1:
        raise CnnError(f"{op_name}: groups must be positive, got {groups}")
    if cin % groups:
        raise CnnError(f"{op_name}: groups g={groups} does not divide the {cin} input channels")
    if out % groups:
        raise CnnError(f"{op_name}: groups g={groups} does not divide the {out} output channels")
    kernel = positive_ints(as_tuple(args["k"], rank, "kernel k"), "kernel k")
    stride = positive_ints(as_tuple(args["s"], rank, "stride s"), "stride s")
    dilation = positive_ints(as_tuple(args["d"], rank, "dilation d"), "dilation d")
    pads = resolve_padding(args["p"], rank, kernel, stride, dilation, shape[2:])
    return {"out": out, "kernel": kernel, "stride": stride, "pads": pads, "dilation": dilation,
            "groups": groups, "bias": bool(args["bias"]), "in_channels": cin}


def _conv_shape(op_name: str, attrs: dict, shape: tuple) -> tuple:
    rank = len(attrs["kernel"])
    spatial = tuple(
        window_output(n, k, s, attrs["pads"][i], attrs["pads"][i + rank], d, False, op_name)
        for i, (n, k, s, d) in enumerate(zip(shape[2:], attrs["kernel"], attrs["stride"], attrs["dilation"]))
    )
    return (shape[0], attrs["out"]) + spatial


def _conv_spec_args(attrs: dict) -> dict:
    return {"out": attrs["out"], "k": compact(attrs["kernel"]), "s": compact(attrs["stride"]),
            "p": padding_arg(attrs["pads"]), "d": compact(attrs["dilation"]), "g": attrs["groups"],
            "bias": attrs["bias"]}


def _conv_weights(attrs: dict) -> dict[str, WeightSpec]:
    fan_in = attrs["in_channels"] // attrs["groups"] * math.prod(attrs["kernel"])
    specs = {"weight": WeightSpec((attrs["out"], attrs["in_channels"] // attrs["groups"]) + attrs["kernel"],
                                  fan_in=fan_in)}
    if attrs["bias"]:
        specs["bias"] = WeightSpec((attrs["out"],), fan_in=fan_in)
    return specs


def _conv_macs(attrs: dict, out: tuple) -> int:
    return numel(out) * (attrs["in_channels"] // attrs["groups"]) * math.prod(attrs["kernel"])


def torch_pad_then(x, pads: tuple, value: float = 0.0):
    """Apply ONNX-order pads with F.pad when they are asymmetric; return (x, symmetric pads)."""
    import torch.nn.functional as F

    rank = len(pads) // 2
    begins, ends = pads[:rank], pads[rank:]
    if begins == ends:
        return x, begins
    torch_pads = []
    for i in reversed(range(rank)):
        torch_pads += [begins[i], ends[i]]
    return F.pad(x, torch_pads, value=value), (0,) * rank


class _ConvFamily(Op):
    """What conv and deform_conv share: weights, MACs and window follow from the conv attributes."""

    category = "conv"
    sliding_window = True
    folds_bn = True

    def channel_axis(self, attrs, rank):
        return 1

    def weight_specs(self, attrs, shapes):
        return _conv_weights(attrs)

    def macs(self, attrs, shapes, out):
        return _conv_macs(attrs, out)

    def window(self, attrs, shapes):
        return sliding_window_step(attrs)


@register
class Conv(_ConvFamily):
    name = "conv"
    params = _CONV_PARAMS
    folds_bn_before = True  # a deform_conv's samples off the grid would see the shift: only conv
    spatial_only = True
    doc = "convolution, 1-D to 3-D by input rank"

    def normalize(self, args, shapes):
        return _conv_attrs(self.name, args, shapes[0])

    def infer_shape(self, attrs, shapes):
        return _conv_shape(self.name, attrs, shapes[0])

    def spec_args(self, attrs):
        return _conv_spec_args(attrs)

    def to_onnx(self, b, layer, inputs, weights):
        a = layer.attrs
        ins = [inputs[0], weights["weight"]] + ([weights["bias"]] if "bias" in weights else [])
        return b.node("Conv", ins, layer.name, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                      pads=list(a["pads"]), dilations=list(a["dilation"]), group=a["groups"])

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        x, pads = torch_pad_then(inputs[0], attrs["pads"])
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(attrs["kernel"])]
        return conv(x, weights["weight"], weights.get("bias"), attrs["stride"], pads, attrs["dilation"],
                    attrs["groups"])

    def torch_source(self, s):
        return s.module()


_CONV_TRANSPOSE_PARAMS = (
    Param("out", "int"), Param("k", "spatial"), Param("s", "spatial", 1), Param("p", "padding", 0),
    Param("output_padding", "spatial", 0), Param("d", "spatial", 1), Param("g", "int", 1), Param("bias", "bool", True),
)


@register
class ConvTranspose(Op):
    """Transposed convolution, as nn.ConvTranspose1d/2d/3d.

    Along each spatial dim the output has (n - 1)*s - p_begin - p_end + d*(k - 1) + output_padding + 1
    positions: the full transposed convolution, output_padding more positions at the end, then
    p_begin cropped at the start and p_end at the end. The weight is [in, out/g, *k].
    """

    name = "conv_transpose"
    params = _CONV_TRANSPOSE_PARAMS
    spatial_only = True
    doc = "transposed convolution (nn.ConvTranspose1d/2d/3d), weight [in, out/g, *k]"
    category = "conv"
    folds_bn = True  # into the weight's axis 1, per group (output_channel_scale)

    def channel_axis(self, attrs, rank):
        return 1

    def output_channel_scale(self, attrs, scale, weight_shape):
        # weight [in, out/g, *k]: output channel o = g * (out/g) + j reads W[i, j] for the inputs i of group g
        import numpy as np

        groups, cin, per_group = attrs["groups"], weight_shape[0], weight_shape[1]
        out_channel = (np.arange(cin) // (cin // groups))[:, None] * per_group + np.arange(per_group)[None, :]
        return scale[out_channel].reshape(out_channel.shape + (1,) * (len(weight_shape) - 2))

    def normalize(self, args, shapes):
        if args["p"] == "same":
            raise CnnError("conv_transpose: p=same is not defined; give the padding explicitly")
        attrs = _conv_attrs(self.name, args, shapes[0])
        rank = len(attrs["kernel"])
        extra = positive_ints(as_tuple(args["output_padding"], rank, "output_padding"), "output_padding",
                              allow_zero=True)
        for e, s in zip(extra, attrs["stride"]):
            # PyTorch also takes e < d, but ONNX Runtime's ConvTranspose refuses e >= s (found by the fuzzer)
            if e >= s:
                raise CnnError(f"conv_transpose: output_padding {e} must be smaller than the stride {s}")
        attrs["output_padding"] = extra
        return attrs

    def infer_shape(self, attrs, shapes):
        rank = len(attrs["kernel"])
        out = []
        for i, n in enumerate(shapes[0][2:]):
            grow = (attrs["dilation"][i] * (attrs["kernel"][i] - 1) + attrs["output_padding"][i] + 1
                    - attrs["stride"][i] - attrs["pads"][i] - attrs["pads"][i + rank])
            size = dims.add(dims.mul(n, attrs["stride"][i]), grow)  # (n - 1)*s - p + d*(k - 1) + op + 1
            if is_static(size) and size < 1:
                raise CnnError(f"conv_transpose: output size {size} is not positive (the padding crops too much)")
            out.append(size)
        return (shapes[0][0], attrs["out"]) + tuple(out)

    def spec_args(self, attrs):
        return {**_conv_spec_args(attrs), "output_padding": compact(attrs["output_padding"])}

    def weight_specs(self, attrs, shapes):
        # nn.ConvTranspose's initialization: fan_in from weight.size(1) * prod(k) = out/g * prod(k).
        fan_in = attrs["out"] // attrs["groups"] * math.prod(attrs["kernel"])
        specs = {"weight": WeightSpec((attrs["in_channels"], attrs["out"] // attrs["groups"]) + attrs["kernel"],
                                      fan_in=fan_in)}
        if attrs["bias"]:
            specs["bias"] = WeightSpec((attrs["out"],), fan_in=fan_in)
        return specs

    def macs(self, attrs, shapes, out):
        # every input position scatters into out/g channels times the kernel
        return numel(shapes[0]) * (attrs["out"] // attrs["groups"]) * math.prod(attrs["kernel"])

    def window(self, attrs, shapes):
        # an output position sees ceil(effective kernel / s) input positions; positions get 1/s apart
        eff = (d * (k - 1) + 1 for k, d in zip(attrs["kernel"], attrs["dilation"]))
        return Window(tuple(float(-(-e // s)) for e, s in zip(eff, attrs["stride"])),
                      tuple(1.0 / s for s in attrs["stride"]))

    def to_onnx(self, b, layer, inputs, weights):
        a = layer.attrs
        ins = [inputs[0], weights["weight"]] + ([weights["bias"]] if "bias" in weights else [])
        return b.node("ConvTranspose", ins, layer.name, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                      pads=list(a["pads"]), dilations=list(a["dilation"]), group=a["groups"],
                      output_padding=list(a["output_padding"]))

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        # F.conv_transpose pads symmetrically: use the smaller pad of each dim, crop the rest.
        rank = len(attrs["kernel"])
        pads = attrs["pads"]
        common = tuple(min(pads[i], pads[i + rank]) for i in range(rank))
        conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[rank]
        y = conv(inputs[0], weights["weight"], weights.get("bias"), attrs["stride"], common,
                 attrs["output_padding"], attrs["groups"], attrs["dilation"])
        for i in range(rank):
            begin, end = pads[i] - common[i], pads[i + rank] - common[i]
            if begin or end:
                y = y.narrow(2 + i, begin, y.shape[2 + i] - begin - end)
        return y

    def torch_source(self, s):
        return s.module()


@register
class DeformConv(_ConvFamily):
    name = "deform_conv"
    params = (Param("offsets", "tensor"),) + _CONV_PARAMS + (Param("offset_groups", "int", 1),
                                                              Param("mask", "tensor", None))
    spatial_only = True
    doc = "deformable convolution; offsets tensor with 2*offset_groups*prod(k) channels; a mask makes it DCNv2"

    def normalize(self, args, shapes):
        x = shapes[0]
        if len(x) != 4:
            raise CnnError(f"deform_conv: needs a 2-D input [N, C, H, W], got rank {len(x)}")
        attrs = _conv_attrs(self.name, args, x)
        og = args["offset_groups"]
        if og < 1 or attrs["in_channels"] % og:
            raise CnnError(f"deform_conv: offset_groups={og} does not divide the {attrs['in_channels']} input channels")
        attrs["offset_groups"] = og
        attrs["mask"] = len(shapes) == 3
        return attrs

    def infer_shape(self, attrs, shapes):
        out = _conv_shape(self.name, attrs, shapes[0])
        taps = attrs["offset_groups"] * math.prod(attrs["kernel"])
        for what, shape, want, rule in (("offsets", shapes[1], 2 * taps, "2*offset_groups*prod(k)"),
                                        ("mask", shapes[2] if attrs["mask"] else None, taps, "offset_groups*prod(k)")):
            if shape is None:
                continue
            if len(shape) != 4 or shape[1] != want:
                raise CnnError(f"deform_conv: {what} must have {want} channels ({rule}), "
                               f"got shape [{', '.join(map(str, shape))}]")
            if tuple(shape[2:]) != tuple(out[2:]):
                raise CnnError(f"deform_conv: {what} spatial size {list(shape[2:])} must equal the output's "
                               f"{list(out[2:])}")
        return out

    def spec_args(self, attrs):
        return {**_conv_spec_args(attrs), "offset_groups": attrs["offset_groups"]}

    def to_onnx(self, b, layer, inputs, weights):
        a = layer.attrs
        b.require_opset(19, "DeformConv")
        ins = [inputs[0], weights["weight"], inputs[1]] + ([weights["bias"]] if "bias" in weights else [])
        if a.get("mask"):
            ins = ins + ([] if "bias" in weights else [""]) + [inputs[2]]
        return b.node("DeformConv", ins, layer.name, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                      pads=list(a["pads"]), dilations=list(a["dilation"]), group=a["groups"],
                      offset_group=a["offset_groups"])

    def torch_ref(self, attrs, inputs, weights):
        from cnncomp.ops.deform import deform_conv2d_reference

        mask = inputs[2] if attrs.get("mask") else None
        return deform_conv2d_reference(inputs[0], inputs[1], weights["weight"], weights.get("bias"), attrs, mask)

    def torch_source(self, s):
        return s.module()


@register
class Linear(Op):
    name = "linear"
    params = (Param("out", "int"), Param("bias", "bool", True))
    category = "linear"
    folds_bn = folds_bn_before = True

    def channel_axis(self, attrs, rank):
        return rank - 1  # linear acts on the last axis, whatever the rank

    def decision_axis(self, attrs, rank):
        return rank - 1  # a classifier's last linear layer: one score per class
    doc = "fully connected layer on the last dim"

    def normalize(self, args, shapes):
        f = shapes[0][-1]
        if not isinstance(f, int):
            raise CnnError(f"linear: the feature dim must be static, got '{f}'")
        if args["out"] < 1:
            raise CnnError(f"linear: out must be positive, got {args['out']}")
        return {"out": args["out"], "bias": bool(args["bias"]), "in_features": f}

    def infer_shape(self, attrs, shapes):
        return shapes[0][:-1] + (attrs["out"],)

    def weight_specs(self, attrs, shapes):
        fan_in = attrs["in_features"]
        specs = {"weight": WeightSpec((attrs["out"], fan_in), fan_in=fan_in)}
        if attrs["bias"]:
            specs["bias"] = WeightSpec((attrs["out"],), fan_in=fan_in)
        return specs

    def macs(self, attrs, shapes, out):
        return numel(out) * attrs["in_features"]

    def window(self, attrs, shapes):
        return None

    def to_onnx(self, b, layer, inputs, weights):
        if len(layer.shape) == 2:
            ins = [inputs[0], weights["weight"]] + ([weights["bias"]] if "bias" in weights else [])
            return b.node("Gemm", ins, layer.name, transB=1)
        wt = b.const_transposed(weights["weight"])
        if "bias" not in weights:
            return b.node("MatMul", [inputs[0], wt], layer.name)
        y = b.node("MatMul", [inputs[0], wt], b.fresh(layer.name + "/matmul"))
        return b.node("Add", [y, weights["bias"]], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        return F.linear(inputs[0], weights["weight"], weights.get("bias"))

    def torch_source(self, s):
        return s.module()
