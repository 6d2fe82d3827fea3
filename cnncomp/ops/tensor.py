"""Layers that move or select data: flatten, dropout, identity, shuffle, upsample, slice, pad."""

from __future__ import annotations

import math

from cnncomp.errors import CnnError
from cnncomp.ops.registry import (
    Op, Param, Window, as_tuple, check_channels, normalize_axis, padding_arg, register, resolve_padding,
    spatial_rank,
)


@register
class Flatten(Op):
    name = "flatten"
    params = (Param("axis", "int", 1),)
    min_rank = 1
    doc = "flatten the dims from axis on into one"

    def normalize(self, args, shapes):
        # ONNX Flatten's axis: up to the rank (all dims in front), negative counts from the back
        return {"axis": normalize_axis(self.name, args["axis"], len(shapes[0]), allow_end=True)}

    def infer_shape(self, attrs, shapes):
        shape, axis = shapes[0], attrs["axis"]
        return (_product(shape[:axis]), _product(shape[axis:]))

    def window(self, attrs, shapes):
        rank = len(shapes[0]) - 2
        if rank <= 0 or attrs["axis"] > 1:
            return None
        return Window((1.0,) * rank, (1.0,) * rank, (True,) * rank)

    def to_onnx(self, b, layer, inputs, weights):
        return b.node("Flatten", [inputs[0]], layer.name, axis=layer.attrs["axis"])

    def torch_ref(self, attrs, inputs, weights):
        x, axis = inputs[0], attrs["axis"]
        lead = math.prod(x.shape[:axis])
        return x.reshape(lead, -1)


def _product(dims: tuple):
    if all(isinstance(d, int) for d in dims):
        return math.prod(dims)
    if len(dims) == 1:
        return dims[0]
    raise CnnError(f"flatten: cannot multiply the dynamic dims {list(dims)}")


class _Passthrough(Op):
    min_rank = 1
    keeps_grid = True

    def infer_shape(self, attrs, shapes):
        return tuple(shapes[0])

    def to_onnx(self, b, layer, inputs, weights):
        return b.node("Identity", [inputs[0]], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        return inputs[0]


@register
class Dropout(_Passthrough):
    name = "dropout"
    params = (Param("p", "number", 0.5),)
    doc = "identity at inference; kept until the drop-identity pass removes it"

    def normalize(self, args, shapes):
        if not 0 <= args["p"] < 1:
            raise CnnError(f"dropout: p must be in [0, 1), got {args['p']}")
        return {"p": float(args["p"])}

    def torch_train(self, attrs, inputs, weights):
        import torch.nn.functional as F

        return F.dropout(inputs[0], attrs["p"], training=True)


@register
class Identity(_Passthrough):
    name = "identity"
    doc = "passes its input through"


@register
class Shuffle(Op):
    name = "shuffle"
    params = (Param("groups", "int"),)
    doc = "channel shuffle (ShuffleNet): [g, C/g] channels transposed to [C/g, g]"

    def normalize(self, args, shapes):
        c, g = check_channels(shapes[0], self.name), args["groups"]
        if g < 1 or c % g:
            raise CnnError(f"shuffle: groups={g} does not divide the {c} channels")
        return {"groups": g, "channels": c}

    def infer_shape(self, attrs, shapes):
        return tuple(shapes[0])

    def to_onnx(self, b, layer, inputs, weights):
        g, c = layer.attrs["groups"], layer.attrs["channels"]
        x = inputs[0]
        split = b.node("Reshape", [x, b.const_int64([0, g, c // g, -1], layer.name + "/split_shape")],
                       b.fresh(layer.name + "/split"))
        swapped = b.node("Transpose", [split], b.fresh(layer.name + "/swapped"), perm=[0, 2, 1, 3])
        shape = b.node("Shape", [x], b.fresh(layer.name + "/shape"))
        return b.node("Reshape", [swapped, shape], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        x, g = inputs[0], attrs["groups"]
        n, c = x.shape[:2]
        return x.reshape(n, g, c // g, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


@register
class Upsample(Op):
    name = "upsample"
    params = (Param("scale", "scale", 2), Param("mode", "str", "nearest", ("nearest", "linear")))
    spatial_only = True
    doc = "resize by a scale factor, nearest or (bi/tri)linear"

    def normalize(self, args, shapes):
        rank = spatial_rank(shapes[0])
        scale = as_tuple(args["scale"], rank, "scale")
        if any(not isinstance(s, (int, float)) or isinstance(s, bool) or s <= 0 for s in scale):
            raise CnnError(f"upsample: scale must be positive numbers, got {scale}")
        return {"scale": tuple(float(s) for s in scale), "mode": args["mode"]}

    def infer_shape(self, attrs, shapes):
        out = []
        for n, s in zip(shapes[0][2:], attrs["scale"]):
            if isinstance(n, str):
                raise CnnError(f"upsample: the dynamic size '{n}' must be static")
            size = math.floor(n * s)
            if size < 1:
                raise CnnError(f"upsample: output size {size} is not positive")
            out.append(size)
        return tuple(shapes[0][:2]) + tuple(out)

    def window(self, attrs, shapes):
        return Window((1.0,) * len(attrs["scale"]), tuple(1.0 / s for s in attrs["scale"]))

    def to_onnx(self, b, layer, inputs, weights):
        a = layer.attrs
        scales = b.const_float([1.0, 1.0] + list(a["scale"]), layer.name + "/scales")
        if a["mode"] == "nearest":
            extra = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        else:
            # half_pixel, not pytorch_half_pixel: the latter maps an output of length 1 to
            # position 0, where F.interpolate samples (0 + 0.5) / scale - 0.5 (found by the fuzzer)
            extra = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
        return b.node("Resize", [inputs[0], "", scales], layer.name, **extra)

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        x = inputs[0]
        if attrs["mode"] == "nearest":
            return F.interpolate(x, scale_factor=attrs["scale"], mode="nearest")
        mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
        return F.interpolate(x, scale_factor=attrs["scale"], mode=mode, align_corners=False)


@register
class Slice(Op):
    name = "slice"
    params = (Param("start", "int"), Param("end", "int"), Param("axis", "int", 1))
    doc = "the positions start..end-1 along axis (channels by default), e.g. to split channels"

    def normalize(self, args, shapes):
        shape = shapes[0]
        axis = normalize_axis(self.name, args["axis"], len(shape))
        size = shape[axis]
        start, end = args["start"], args["end"]
        if not isinstance(size, int):
            raise CnnError(f"slice: axis {axis} has a dynamic size '{size}'")
        if not 0 <= start < end <= size:
            raise CnnError(f"slice: needs 0 <= start < end <= {size}, got start={start}, end={end}")
        return {"start": start, "end": end, "axis": axis}

    def infer_shape(self, attrs, shapes):
        shape = list(shapes[0])
        shape[attrs["axis"]] = attrs["end"] - attrs["start"]
        return tuple(shape)

    def to_onnx(self, b, layer, inputs, weights):
        a = layer.attrs
        return b.node("Slice", [inputs[0], b.const_int64([a["start"]], layer.name + "/starts"),
                                b.const_int64([a["end"]], layer.name + "/ends"),
                                b.const_int64([a["axis"]], layer.name + "/axes")], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        return inputs[0].narrow(attrs["axis"], attrs["start"], attrs["end"] - attrs["start"])


@register
class Pad(Op):
    name = "pad"
    params = (Param("p", "padding"), Param("value", "number", 0.0))
    spatial_only = True
    doc = "explicit constant padding of the spatial dims"

    def normalize(self, args, shapes):
        rank = spatial_rank(shapes[0])
        if args["p"] == "same":
            raise CnnError("pad: p=same needs a kernel; give the padding explicitly")
        pads = resolve_padding(args["p"], rank, (1,) * rank, (1,) * rank, (1,) * rank, shapes[0][2:])
        return {"pads": pads, "value": float(args["value"])}

    def spec_args(self, attrs):
        return {"p": padding_arg(attrs["pads"]), "value": attrs["value"]}

    def infer_shape(self, attrs, shapes):
        rank = spatial_rank(shapes[0])
        pads = attrs["pads"]
        out = []
        for i, n in enumerate(shapes[0][2:]):
            if isinstance(n, str):
                if pads[i] or pads[i + rank]:
                    raise CnnError(f"pad: the dynamic size '{n}' must be static")
                out.append(n)
            else:
                out.append(n + pads[i] + pads[i + rank])
        return tuple(shapes[0][:2]) + tuple(out)

    def window(self, attrs, shapes):
        rank = spatial_rank(shapes[0])
        return Window((1.0,) * rank, (1.0,) * rank)

    def to_onnx(self, b, layer, inputs, weights):
        rank = len(layer.shape) - 2
        p = layer.attrs["pads"]
        full = [0, 0] + list(p[:rank]) + [0, 0] + list(p[rank:])
        return b.node("Pad", [inputs[0], b.const_int64(full, layer.name + "/pads"),
                              b.const_scalar(layer.attrs["value"], layer.dtype)], layer.name, mode="constant")

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        p = attrs["pads"]
        rank = len(p) // 2
        torch_pads = [v for i in reversed(range(rank)) for v in (p[i], p[i + rank])]
        return F.pad(inputs[0], torch_pads, value=attrs["value"])
