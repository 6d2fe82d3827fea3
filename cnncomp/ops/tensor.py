"""Layers that move or select data: flatten, dropout, identity, shuffle, upsample, pixel_shuffle,
pixel_unshuffle, slice, pad."""

from __future__ import annotations

import math

from cnncomp.errors import CnnError
from cnncomp.ops import dims
from cnncomp.ops.dims import is_static, is_symbolic_shape
from cnncomp.ops.registry import (
    Op, Param, Window, as_tuple, check_channels, compact, normalize_axis, padding_arg, positive_ints, register,
    resolve_padding,
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

    def torch_source(self, s):
        shape = f"{s.helper('shape_flatten')}({', '.join([s.shape] + s.keywords(['axis']))})"
        if not s.given("axis") or s.number("axis") == 1:
            return s.expression(f"torch.flatten({s.x}, 1)", shape)
        return s.function(s.helper("flatten"), *s.written(), shape=shape)


def _product(sizes: tuple):
    if len(sizes) == 1:
        return sizes[0]
    return dims.mul(*sizes) if sizes else 1


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

    def torch_source(self, s):
        return s.expression(f"F.dropout({s.x}, {s.args(['p'], write_defaults=True)[0]}, self.training)")


@register
class Identity(_Passthrough):
    name = "identity"
    doc = "passes its input through"

    def torch_source(self, s):
        return s.unchanged()


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

    def torch_source(self, s):
        return s.function(s.helper("shuffle"), *s.written())


_INTERPOLATE = {"linear": {3: "linear", 4: "bilinear", 5: "trilinear"}, "cubic": {4: "bicubic"}}


@register
class Upsample(Op):
    """Resize, exactly as F.interpolate (antialias off).

    Output size: `size`, or floor(n * scale). Each output position x maps to an input
    coordinate with r = 1/scale when a scale is given (as F.interpolate uses it), else n_in/n_out:
    nearest: floor(x * r) (ONNX `asymmetric`, `floor`); linear and cubic: (x + 0.5) * r - 0.5
    (ONNX `half_pixel`; linear clamps it at 0), or with align_corners x * (n_in - 1)/(n_out - 1).
    Cubic uses a = -0.75 and repeats the border.
    """

    name = "upsample"
    params = (Param("scale", "scale", None), Param("mode", "str", "nearest", ("nearest", "linear", "cubic")),
              Param("size", "spatial", None), Param("align_corners", "bool", False))
    spatial_only = True
    doc = "resize by a scale factor or to a size: nearest, (bi/tri)linear or bicubic, as F.interpolate"

    def normalize(self, args, shapes):
        rank = spatial_rank(shapes[0])
        mode = args["mode"]
        if mode == "cubic" and rank != 2:
            raise CnnError(f"upsample: mode \"cubic\" needs a 2-D input [N, C, H, W] (as F.interpolate), "
                           f"got rank {rank + 2}")
        if mode == "nearest" and args["align_corners"]:
            raise CnnError("upsample: align_corners only applies to modes \"linear\" and \"cubic\"")
        attrs = {"mode": mode, "align_corners": bool(args["align_corners"])}
        if args["size"] is not None:
            if args["scale"] is not None:
                raise CnnError("upsample: give scale= or size=, not both")
            size = as_tuple(args["size"], rank, "size")  # symbolic sizes allowed: spatial(x) of a dynamic x
            positive_ints(tuple(d for d in size if is_static(d) or not isinstance(d, str)), "size")
            attrs["size"] = size
            return attrs
        scale = as_tuple(2 if args["scale"] is None else args["scale"], rank, "scale")
        if any(not isinstance(s, (int, float)) or isinstance(s, bool) or s <= 0 for s in scale):
            raise CnnError(f"upsample: scale must be positive numbers, got {scale}")
        attrs["scale"] = tuple(float(s) for s in scale)
        return attrs

    def spec_args(self, attrs):
        args = {"mode": attrs["mode"], "align_corners": attrs.get("align_corners", False)}
        if "size" in attrs:
            args["size"] = compact(attrs["size"])
        else:
            args["scale"] = compact(attrs["scale"])
        return args

    def infer_shape(self, attrs, shapes):
        if "size" in attrs:
            return tuple(shapes[0][:2]) + tuple(attrs["size"])
        out = []
        for n, s in zip(shapes[0][2:], attrs["scale"]):
            size = dims.scale_floor(n, s, "upsample")
            if is_static(size) and size < 1:
                raise CnnError(f"upsample: output size {size} is not positive")
            out.append(size)
        return tuple(shapes[0][:2]) + tuple(out)

    def window(self, attrs, shapes):
        if "size" in attrs:
            spatial = shapes[0][2:]
            ratios = tuple(dims.ratio(m, n) for n, m in zip(spatial, attrs["size"]))
        else:
            ratios = attrs["scale"]
        return Window((1.0,) * len(ratios), tuple(1.0 / s for s in ratios))

    def to_onnx(self, b, layer, inputs, weights):
        a = layer.attrs
        # align_corners depends only on the sizes in PyTorch; ONNX, given scales, would use n * scale unrounded
        if "size" not in a and a.get("align_corners") and is_symbolic_shape(layer.shape[2:]):
            raise CnnError("upsample: align_corners=true with scale= on a symbolic size is not lowered to ONNX; "
                           "give size= or a static input")
        if "size" in a or a.get("align_corners"):
            spatial = tuple(layer.shape[2:])
            if all(isinstance(d, int) for d in layer.shape):
                sizes = b.const_int64(list(layer.shape[:2]) + list(spatial), layer.name + "/sizes")
            else:
                shape = b.node("Shape", [inputs[0]], b.fresh(layer.name + "/shape"))
                lead = b.node("Slice", [shape, b.const_int64([0], layer.name + "/zero"),
                                        b.const_int64([2], layer.name + "/two")], b.fresh(layer.name + "/lead"))
                sizes = b.node("Concat", [lead, b.sizes(spatial, layer.name + "/spatial_sizes")],
                               b.fresh(layer.name + "/sizes"), axis=0)
            resize_inputs = [inputs[0], "", "", sizes]
        else:
            scales = _float32_scales(b.shape(inputs[0])[2:], a["scale"], layer.shape[2:])
            resize_inputs = [inputs[0], "", b.const_float([1.0, 1.0] + scales, layer.name + "/scales")]
        if a["mode"] == "nearest":
            extra = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        else:
            coords = "align_corners" if a.get("align_corners") else "half_pixel"
            extra = {"mode": a["mode"], "coordinate_transformation_mode": coords}
            if a["mode"] == "cubic":
                extra["cubic_coeff_a"] = -0.75
        return b.node("Resize", resize_inputs, layer.name, **extra)

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        x = inputs[0]
        where = {"size": attrs["size"]} if "size" in attrs else {"scale_factor": attrs["scale"]}
        if attrs["mode"] == "nearest":
            return F.interpolate(x, mode="nearest", **where)
        return F.interpolate(x, mode=_INTERPOLATE[attrs["mode"]][x.dim()],
                             align_corners=attrs.get("align_corners", False), **where)

    def torch_source(self, s):
        shape = f"{s.helper('shape_upsample')}({', '.join([s.shape] + s.keywords(['scale', 'size']))})"
        return s.function(s.helper("upsample"), *s.written(), shape=shape)


def _float32_scales(sizes: tuple, scales: tuple, out: tuple) -> list[float]:
    """Resize's float32 scales, nudged up where float32 rounding would give a smaller output than
    floor(n * scale) in double, as PyTorch computes it (10 * float32(1.3) is 12.9999995)."""
    import numpy as np

    from fractions import Fraction

    result = []
    for n, scale, want in zip(sizes, scales, out):
        s32 = np.float32(scale)
        while isinstance(n, int) and min(np.floor(np.float32(n) * s32), np.floor(n * float(s32))) < want:
            s32 = np.nextafter(s32, np.float32(np.inf))
        # a symbolic size: floor(n * s32) is floor(n * p/q) when float32 s32 is not below p/q
        while not isinstance(n, int) and Fraction(float(s32)) < Fraction(scale).limit_denominator(1000):
            s32 = np.nextafter(s32, np.float32(np.inf))
        result.append(float(s32))
    return result


class _PixelShuffleBase(Op):
    params = (Param("r", "int"),)

    def check(self, shape: tuple, r: int) -> None:
        if len(shape) != 4:
            raise CnnError(f"{self.name}: needs a 2-D input [N, C, H, W] (as nn.{self.torch_name}), "
                           f"got rank {len(shape)}")
        if r < 1:
            raise CnnError(f"{self.name}: r must be positive, got {r}")


@register
class PixelShuffle(_PixelShuffleBase):
    """[N, C*r*r, H, W] -> [N, C, H*r, W*r]: channel c*r*r + i*r + j goes to row h*r + i, column w*r + j
    (ONNX DepthToSpace in mode CRD)."""

    name = "pixel_shuffle"
    torch_name = "PixelShuffle"
    doc = "channels to space, as nn.PixelShuffle(r) (ONNX DepthToSpace, CRD order)"

    def normalize(self, args, shapes):
        shape, r = shapes[0], args["r"]
        self.check(shape, r)
        c = check_channels(shape, self.name)
        if c % (r * r):
            raise CnnError(f"pixel_shuffle: the {c} channels are not a multiple of r*r = {r * r}")
        return {"r": r}

    def infer_shape(self, attrs, shapes):
        n, c, h, w = shapes[0]
        r = attrs["r"]
        return (n, c // (r * r), dims.mul(h, r), dims.mul(w, r))

    def window(self, attrs, shapes):
        return Window((1.0, 1.0), (1.0 / attrs["r"],) * 2)

    def to_onnx(self, b, layer, inputs, weights):
        return b.node("DepthToSpace", [inputs[0]], layer.name, blocksize=layer.attrs["r"], mode="CRD")

    def torch_ref(self, attrs, inputs, weights):
        # written from the definition, not with F.pixel_shuffle
        x, r = inputs[0], attrs["r"]
        n, c, h, w = x.shape
        return x.reshape(n, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)

    def torch_source(self, s):
        shape = f"{s.helper('shape_' + self.name)}({s.shape}, {s.arg('r', 'init')})"
        return s.function(f"F.{self.name}", s.arg("r"), shape=shape)


@register
class PixelUnshuffle(_PixelShuffleBase):
    """[N, C, H*r, W*r] -> [N, C*r*r, H, W], the inverse of pixel_shuffle. ONNX SpaceToDepth orders
    the channels (i, j, c), PyTorch (c, i, j): lowered as Reshape-Transpose-Reshape."""

    name = "pixel_unshuffle"
    torch_name = "PixelUnshuffle"
    doc = "space to channels, as nn.PixelUnshuffle(r)"

    def normalize(self, args, shapes):
        shape, r = shapes[0], args["r"]
        self.check(shape, r)
        check_channels(shape, self.name)
        for d in shape[2:]:
            if dims.remainder(d, r) != 0:
                hint = dims.mismatch_hint(dims.mul(dims.floor_div(d, r), r), d) if not is_static(d) else ""
                raise CnnError(f"pixel_unshuffle: the spatial size {d} is not a multiple of r={r}{hint}")
        return {"r": r}

    def infer_shape(self, attrs, shapes):
        n, c, h, w = shapes[0]
        r = attrs["r"]
        return (n, c * r * r, dims.floor_div(h, r), dims.floor_div(w, r))

    def window(self, attrs, shapes):
        r = float(attrs["r"])
        return Window((r, r), (r, r))

    def to_onnx(self, b, layer, inputs, weights):
        r = layer.attrs["r"]
        n, c, h, w = layer.shape
        c //= r * r
        if is_static(h) and is_static(w):
            split_shape = b.const_int64([0, c, h, r, w, r], layer.name + "/split_shape")
            out_shape = b.const_int64([0, c * r * r, h, w], layer.name + "/shape")
        else:  # H/r and W/r read from the input's shape when it runs
            shape = b.node("Shape", [inputs[0]], b.fresh(layer.name + "/in_shape"))
            hw = b.node("Div", [b.node("Slice", [shape, b.const_int64([2], layer.name + "/two"),
                                                  b.const_int64([4], layer.name + "/four")],
                                       b.fresh(layer.name + "/in_hw")),
                                b.const_int64([r], layer.name + "/r")], b.fresh(layer.name + "/hw"))
            parts = [b.node("Slice", [hw, b.const_int64([i], f"{layer.name}/at{i}"),
                                      b.const_int64([i + 1], f"{layer.name}/to{i + 1}")], b.fresh(f"{layer.name}/hw{i}"))
                     for i in (0, 1)]
            split_shape = b.node("Concat", [b.const_int64([0, c], layer.name + "/lead"), parts[0],
                                            b.const_int64([r], layer.name + "/block"), parts[1],
                                            b.const_int64([r], layer.name + "/block_w")],
                                 b.fresh(layer.name + "/split_shape"), axis=0)
            out_shape = b.node("Concat", [b.const_int64([0, c * r * r], layer.name + "/out_lead"), hw],
                               b.fresh(layer.name + "/shape"), axis=0)
        split = b.node("Reshape", [inputs[0], split_shape], b.fresh(layer.name + "/split"))
        moved = b.node("Transpose", [split], b.fresh(layer.name + "/moved"), perm=[0, 1, 3, 5, 2, 4])
        return b.node("Reshape", [moved, out_shape], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        x, r = inputs[0], attrs["r"]
        n, c, h, w = x.shape
        return x.reshape(n, c, h // r, r, w // r, r).permute(0, 1, 3, 5, 2, 4).reshape(n, c * r * r, h // r, w // r)

    def torch_source(self, s):
        shape = f"{s.helper('shape_' + self.name)}({s.shape}, {s.arg('r', 'init')})"
        return s.function(f"F.{self.name}", s.arg("r"), shape=shape)


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

    def torch_source(self, s):
        start, end = s.arg("start"), s.arg("end")
        axis = s.number("axis") if s.given("axis") else 1
        if isinstance(axis, int) and axis >= 0:
            code = f"{s.atom()}[{':, ' * axis}{start}:{end}]"
        else:
            code = f"{s.atom()}.narrow({s.arg('axis')}, {start}, {end} - {start})"
        shape_args = [s.shape] + s.keywords(["start", "end", "axis"])
        return s.expression(code, f"{s.helper('shape_slice')}({', '.join(shape_args)})")


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@register
class Pad(Op):
    """Padding of the spatial dims, as F.pad: `constant` (with `value`), `reflect` (mirror without
    repeating the border), `replicate` (repeat the border), `circular` (wrap around)."""

    name = "pad"
    params = (Param("p", "padding"), Param("mode", "str", "constant", tuple(_PAD_MODES)),
              Param("value", "number", 0.0))
    spatial_only = True
    doc = "padding of the spatial dims: constant, reflect, replicate or circular (F.pad)"

    def normalize(self, args, shapes):
        rank = spatial_rank(shapes[0])
        if args["p"] == "same":
            raise CnnError("pad: p=same needs a kernel; give the padding explicitly")
        pads = resolve_padding(args["p"], rank, (1,) * rank, (1,) * rank, (1,) * rank, shapes[0][2:])
        mode = args["mode"]
        if mode != "constant":
            if args["value"] != 0:
                raise CnnError(f"pad: value= only applies to mode \"constant\", not \"{mode}\"")
            for i, n in enumerate(shapes[0][2:]):
                limit = n - 1 if mode == "reflect" else n
                most = max(pads[i], pads[i + rank])
                if mode != "replicate" and isinstance(n, int) and most > limit:
                    raise CnnError(f"pad: mode \"{mode}\" pads at most {limit} on a dim of size {n}, got {most}")
        return {"pads": pads, "mode": mode, "value": float(args["value"])}

    def spec_args(self, attrs):
        return {"p": padding_arg(attrs["pads"]), "mode": attrs.get("mode", "constant"), "value": attrs["value"]}

    def infer_shape(self, attrs, shapes):
        rank = spatial_rank(shapes[0])
        pads = attrs["pads"]
        out = []
        for i, n in enumerate(shapes[0][2:]):
            out.append(dims.add(n, pads[i] + pads[i + rank]))
        return tuple(shapes[0][:2]) + tuple(out)

    def window(self, attrs, shapes):
        rank = spatial_rank(shapes[0])
        return Window((1.0,) * rank, (1.0,) * rank)

    def to_onnx(self, b, layer, inputs, weights):
        rank = len(layer.shape) - 2
        p = layer.attrs["pads"]
        full = [0, 0] + list(p[:rank]) + [0, 0] + list(p[rank:])
        mode = _PAD_MODES[layer.attrs.get("mode", "constant")]
        if mode == "wrap":
            b.require_opset(19, "pad(mode=\"circular\") (ONNX Pad mode wrap)")
        ins = [inputs[0], b.const_int64(full, layer.name + "/pads")]
        if mode == "constant":
            ins.append(b.const_scalar(layer.attrs["value"], layer.dtype))
        return b.node("Pad", ins, layer.name, mode=mode)

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        p = attrs["pads"]
        rank = len(p) // 2
        torch_pads = [v for i in reversed(range(rank)) for v in (p[i], p[i + rank])]
        mode = attrs.get("mode", "constant")
        if mode == "constant":
            return F.pad(inputs[0], torch_pads, value=attrs["value"])
        return F.pad(inputs[0], torch_pads, mode=mode)

    def torch_source(self, s):
        args = s.written()
        shape = f"{s.helper('shape_pad')}({', '.join([s.shape] + s.keywords(['p']))})"
        return s.function(s.helper("pad"), *args, shape=shape)
