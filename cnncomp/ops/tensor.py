"""Layers that move or select data: flatten, dropout, identity, shuffle, pixel_shuffle, pixel_unshuffle,
slice, pad (upsample is in resize.py)."""

from __future__ import annotations

import math

from cnncomp.errors import CnnError
from cnncomp.ops import dims
from cnncomp.ops.dims import is_static
from cnncomp.ops.registry import (
    Op, Param, Window, check_channels, normalize_axis, padding_arg, register, resolve_padding, spatial_rank,
)


@register
class Flatten(Op):
    name = "flatten"
    params = (Param("axis", "int", 1), Param("keep_leading", "bool", False))
    min_rank = 1
    keeps_values = True
    doc = "flatten the dims from axis on into one (and those before it into another, unless keep_leading)"

    def normalize(self, args, shapes):
        # ONNX Flatten's axis: up to the rank (all dims in front), negative counts from the back
        return {"axis": normalize_axis(self.name, args["axis"], len(shapes[0]), allow_end=True),
                "keep_leading": bool(args["keep_leading"])}

    def infer_shape(self, attrs, shapes):
        shape, axis = shapes[0], attrs["axis"]
        if attrs.get("keep_leading"):  # torch.flatten(x, axis): [N, C, H, W] -> [N, C, H*W] for axis 2
            return tuple(shape[:axis]) + (_product(shape[axis:]),)
        return (_product(shape[:axis]), _product(shape[axis:]))

    def window(self, attrs, shapes):
        rank = len(shapes[0]) - 2
        if rank <= 0 or attrs["axis"] > 1:
            return None
        return Window((1.0,) * rank, (1.0,) * rank, (True,) * rank)

    def to_onnx(self, b, layer, inputs, weights):
        axis = layer.attrs["axis"]
        if layer.attrs.get("keep_leading"):
            # ONNX Flatten always gives 2-D; a Reshape whose 0s copy the leading dims keeps them (and N dynamic)
            target = b.const_int64([0] * axis + [-1], layer.name + "/shape")
            return b.node("Reshape", [inputs[0], target], layer.name)
        return b.node("Flatten", [inputs[0]], layer.name, axis=axis)

    def torch_ref(self, attrs, inputs, weights):
        x, axis = inputs[0], attrs["axis"]
        if attrs.get("keep_leading"):
            return x.reshape(*x.shape[:axis], -1)
        lead = math.prod(x.shape[:axis])
        return x.reshape(lead, -1)

    def torch_source(self, s):
        shape = f"{s.helper('shape_flatten')}({', '.join([s.shape] + s.keywords(['axis', 'keep_leading']))})"
        if not s.given("keep_leading") and (not s.given("axis") or s.number("axis") == 1):
            return s.expression(f"torch.flatten({s.x}, 1)", shape)
        return s.function(s.helper("flatten"), *s.written(), shape=shape)


def _product(sizes: tuple):
    if len(sizes) == 1:
        return sizes[0]
    return dims.mul(*sizes) if sizes else 1


class _Passthrough(Op):
    min_rank = 1
    keeps_grid = True
    keeps_values = True

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
    params = (Param("start", "int"), Param("end", "int"), Param("axis", "int", 1), Param("step", "int", 1))
    doc = "the positions start, start+step, ... before end along axis (channels by default), e.g. to split channels"

    def normalize(self, args, shapes):
        shape = shapes[0]
        axis = normalize_axis(self.name, args["axis"], len(shape))
        size = shape[axis]
        start, end = args["start"], args["end"]
        if not isinstance(size, int):
            raise CnnError(f"slice: axis {axis} has a dynamic size '{size}'")
        if not 0 <= start < end <= size:
            raise CnnError(f"slice: needs 0 <= start < end <= {size}, got start={start}, end={end}")
        if args["step"] < 1:
            raise CnnError(f"slice: step must be at least 1, got {args['step']}")
        return {"start": start, "end": end, "axis": axis, "step": args["step"]}

    def infer_shape(self, attrs, shapes):
        shape = list(shapes[0])
        shape[attrs["axis"]] = -(-(attrs["end"] - attrs["start"]) // attrs.get("step", 1))
        return tuple(shape)

    def to_onnx(self, b, layer, inputs, weights):
        a = layer.attrs
        operands = [inputs[0], b.const_int64([a["start"]], layer.name + "/starts"),
                    b.const_int64([a["end"]], layer.name + "/ends"), b.const_int64([a["axis"]], layer.name + "/axes")]
        if a.get("step", 1) != 1:
            operands.append(b.const_int64([a["step"]], layer.name + "/steps"))
        return b.node("Slice", operands, layer.name)

    def torch_ref(self, attrs, inputs, weights):
        index = (slice(None),) * attrs["axis"] + (slice(attrs["start"], attrs["end"], attrs.get("step", 1)),)
        return inputs[0][index]

    def torch_source(self, s):
        start, end = s.arg("start"), s.arg("end")
        step = f":{s.arg('step')}" if s.given("step") else ""
        axis = s.number("axis") if s.given("axis") else 1
        if isinstance(axis, int) and axis >= 0:
            code = f"{s.atom()}[{':, ' * axis}{start}:{end}{step}]"
        elif isinstance(axis, int):  # counted from the back: an ellipsis in front, whole dims after it
            code = f"{s.atom()}[..., {start}:{end}{step}{', :' * (-axis - 1)}]"
        elif not step:
            code = f"{s.atom()}.narrow({s.arg('axis')}, {start}, {end} - {start})"
        else:
            code = f"{s.helper('slice_steps')}({s.atom()}, {start}, {end}, {s.arg('axis')}, {s.arg('step')})"
        shape_args = [s.shape] + s.keywords(["start", "end", "axis", "step"])
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
