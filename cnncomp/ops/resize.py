"""upsample: resizing the spatial dims, as F.interpolate or as the other coordinate rules of ONNX Resize."""

from __future__ import annotations


from cnncomp.errors import CnnError
from cnncomp.ops import dims
from cnncomp.ops.dims import is_static, is_symbolic_shape
from cnncomp.ops.registry import Op, Param, Window, as_tuple, compact, positive_ints, register, spatial_rank

_INTERPOLATE = {"linear": {3: "linear", 4: "bilinear", 5: "trilinear"}, "cubic": {4: "bicubic"}}

# ONNX Resize's coordinate_transformation_mode values that `coordinates=` spells (align_corners is the
# bool argument of that name) and its nearest_mode values that `rounding=` spells
COORDINATES = ("asymmetric", "half_pixel", "pytorch_half_pixel", "half_pixel_symmetric")
ROUNDING = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")


@register
class Upsample(Op):
    """Resize, exactly as F.interpolate (antialias off), or by one of ONNX Resize's coordinate rules.

    Output size: `size`, or floor(n * scale). Each output position x maps to an input
    coordinate with r = 1/scale when a scale is given (as F.interpolate uses it), else n_in/n_out:
    nearest: floor(x * r) (ONNX `asymmetric`, `floor`); nearest-exact: floor((x + 0.5) * r)
    (ONNX `half_pixel`, `round_prefer_ceil`); linear and cubic: (x + 0.5) * r - 0.5
    (ONNX `half_pixel`; linear clamps it at 0), or with align_corners x * (n_in - 1)/(n_out - 1).
    Cubic uses a = -0.75 and repeats the border.

    With `coordinates=` (nearest and linear), the coordinate is ONNX's rule of that name
    (asymmetric: x * r; half_pixel: (x + 0.5) * r - 0.5; pytorch_half_pixel: the same, 0 for
    a size-1 output; half_pixel_symmetric: half_pixel shifted by (n_in / 2) * (1 - n_out / (n_in *
    scale)) so that a floored output stays centred), and nearest rounds it by `rounding=`
    (ONNX's nearest_mode, round_prefer_floor by default); indices past the border repeat it.
    These are what TensorFlow, Keras and PaddlePaddle exporters write.
    """

    name = "upsample"
    params = (Param("scale", "scale", None),
              Param("mode", "str", "nearest", ("nearest", "nearest-exact", "linear", "cubic")),
              Param("size", "spatial", None), Param("align_corners", "bool", False),
              Param("coordinates", "str", None, COORDINATES), Param("rounding", "str", None, ROUNDING))
    spatial_only = True
    doc = "resize by a scale factor or to a size: nearest, nearest-exact, (bi/tri)linear or bicubic"

    def normalize(self, args, shapes):
        rank = spatial_rank(shapes[0])
        mode = args["mode"]
        if mode == "cubic" and rank != 2:
            raise CnnError(f"upsample: mode \"cubic\" needs a 2-D input [N, C, H, W] (as F.interpolate), "
                           f"got rank {rank + 2}")
        if mode.startswith("nearest") and args["align_corners"]:
            raise CnnError("upsample: align_corners only applies to modes \"linear\" and \"cubic\"")
        attrs = {"mode": mode, "align_corners": bool(args["align_corners"])}
        coords, rounding = args.get("coordinates"), args.get("rounding")
        if coords is not None:
            if mode not in ("nearest", "linear"):
                raise CnnError(f"upsample: coordinates= applies to modes \"nearest\" and \"linear\", not \"{mode}\"")
            if args["align_corners"]:
                raise CnnError("upsample: give align_corners=true or coordinates=, not both")
            attrs["coordinates"] = coords
            if mode == "nearest":
                attrs["rounding"] = rounding or "round_prefer_floor"
        if rounding is not None and (coords is None or mode != "nearest"):
            raise CnnError("upsample: rounding= applies to mode \"nearest\" with coordinates=")
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
        for key in ("coordinates", "rounding"):
            if key in attrs:
                args[key] = attrs[key]
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
        if "coordinates" in a:
            if a["coordinates"] == "half_pixel_symmetric":
                b.require_opset(19, "upsample(coordinates=\"half_pixel_symmetric\") (ONNX Resize, opset 19)")
            extra = {"mode": a["mode"], "coordinate_transformation_mode": a["coordinates"]}
            if a["mode"] == "nearest":
                extra["nearest_mode"] = a["rounding"]
        elif a["mode"] == "nearest":
            extra = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        elif a["mode"] == "nearest-exact":
            extra = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                     "nearest_mode": "round_prefer_ceil"}
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
        if "coordinates" in attrs:
            from cnncomp.ops.torch_prelude import resample

            return resample(x, attrs["mode"], attrs["coordinates"], attrs.get("rounding"), **where)
        if attrs["mode"].startswith("nearest"):
            return F.interpolate(x, mode=attrs["mode"], **where)
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
