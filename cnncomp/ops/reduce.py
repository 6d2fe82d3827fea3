"""Reductions over chosen axes: mean and sum (`x.mean((2, 3))` heads, squeeze-and-excitation, split attention)."""

from __future__ import annotations

import math

from cnncomp.ops.registry import Op, Param, Window, normalize_axes, register


def reduced_shape(shape: tuple, axes: tuple, keepdims: bool) -> tuple:
    """The shape after reducing `axes`: each kept as 1 with keepdims, else dropped."""
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


class _Reduce(Op):
    params = (Param("axes", "ints", (2, 3)), Param("keepdims", "bool", False))
    category = "pool"

    def normalize(self, args, shapes):
        axes = normalize_axes(self.name, args["axes"], len(shapes[0]))
        return {"axes": axes, "keepdims": bool(args["keepdims"])}

    def spec_args(self, attrs):
        return {"axes": attrs["axes"][0] if len(attrs["axes"]) == 1 else attrs["axes"],
                "keepdims": attrs["keepdims"]}

    def infer_shape(self, attrs, shapes):
        return reduced_shape(shapes[0], attrs["axes"], attrs["keepdims"])

    def window(self, attrs, shapes):
        # over every spatial axis: each output sees the whole map (as gap)
        rank = len(shapes[0]) - 2
        if rank < 1 or not set(range(2, rank + 2)) <= set(attrs["axes"]):
            return None
        return Window((1.0,) * rank, (1.0,) * rank, (True,) * rank)

    def torch_source(self, s):
        axes = s.arg("axes") or "(2, 3)"
        keep = s.arg("keepdims") or "False"
        shape = f"{s.helper('shape_reduce')}({', '.join([s.shape] + s.keywords(['axes', 'keepdims']))})"
        return s.expression(f"{s.atom()}.{self.name}({axes}, keepdim={keep})", shape)


def _static_count(shape: tuple, axes: tuple) -> int | None:
    dims = [shape[a] for a in axes]
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


@register
class Mean(_Reduce):
    """The mean over `axes`. Lowered as GlobalAveragePool where it is one (every spatial axis, kept), else
    ReduceSum (axes as an input, opset 13 on) divided by the count, or with a symbolic size among the
    reduced axes ReduceMean with axes as an input (opset 18)."""

    name = "mean"
    doc = "the mean over axes (keepdims keeps them as size 1); over the spatial axes with keepdims, gap"

    def to_onnx(self, b, layer, inputs, weights):
        a, in_shape = layer.attrs, b.shape(inputs[0])
        spatial = tuple(range(2, len(in_shape)))
        if a["keepdims"] and spatial and a["axes"] == spatial:
            return b.node("GlobalAveragePool", [inputs[0]], layer.name)
        axes = b.const_int64(list(a["axes"]), layer.name + "/axes")
        count = _static_count(in_shape, a["axes"])
        if count is None:
            b.require_opset(18, "mean over a symbolic size (ReduceMean with axes as an input)")
            return b.node("ReduceMean", [inputs[0], axes], layer.name, keepdims=int(a["keepdims"]))
        total = b.node("ReduceSum", [inputs[0], axes], b.fresh(layer.name + "/sum"), keepdims=int(a["keepdims"]))
        return b.node("Div", [total, b.const_scalar(float(count), layer.dtype)], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        return inputs[0].mean(dim=attrs["axes"], keepdim=attrs["keepdims"])


@register
class Sum(_Reduce):
    name = "sum"
    doc = "the sum over axes (keepdims keeps them as size 1)"

    def to_onnx(self, b, layer, inputs, weights):
        a = layer.attrs
        axes = b.const_int64(list(a["axes"]), layer.name + "/axes")
        return b.node("ReduceSum", [inputs[0], axes], layer.name, keepdims=int(a["keepdims"]))

    def torch_ref(self, attrs, inputs, weights):
        return inputs[0].sum(dim=attrs["axes"], keepdim=attrs["keepdims"])
