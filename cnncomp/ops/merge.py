"""Merges: layers that take several tensors (concat, add, mul, sub, div)."""

from __future__ import annotations

from cnncomp.errors import CnnError
from cnncomp.ops.dims import add, mismatch_hint, same_size
from cnncomp.ops.registry import Op, Param, fmt_shape, normalize_axis, register


def dim_name(axis: int, rank: int) -> str:
    """A readable name for a dim: batch, channels, height, width..."""
    if axis == 0:
        return "batch"
    if axis == 1:
        return "channels"
    spatial = {3: ["length"], 4: ["height", "width"], 5: ["depth", "height", "width"]}.get(rank)
    if spatial:
        return spatial[axis - 2]
    return f"dim {axis}"


def broadcast(op_name: str, shapes: list[tuple]) -> tuple:
    """Element-wise broadcasting: equal dims, or one of them 1."""
    rank = len(shapes[0])
    for s in shapes[1:]:
        if len(s) != rank:
            raise CnnError(f"{op_name}: shapes {fmt_shape(shapes[0])} and {fmt_shape(s)} differ in rank")
    out = list(shapes[0])
    for s in shapes[1:]:
        for i, d in enumerate(s):
            if d == 1 or same_size(d, out[i]):
                continue
            if out[i] == 1:
                out[i] = d
                continue
            raise CnnError(f"{op_name}: shapes {fmt_shape(shapes[0])} and {fmt_shape(s)} differ in {dim_name(i, rank)}"
                           + mismatch_hint(d, out[i]))
    return tuple(out)


class _Merge(Op):
    variadic = True
    min_rank = 1
    category = "merge"


@register
class Add(_Merge):
    name = "add"
    doc = "element-wise sum of tensors (broadcasting)"

    def infer_shape(self, attrs, shapes):
        return broadcast(self.name, shapes)

    def to_onnx(self, b, layer, inputs, weights):
        return b.node("Add" if len(inputs) == 2 else "Sum", inputs, layer.name)

    def torch_ref(self, attrs, inputs, weights):
        out = inputs[0]
        for t in inputs[1:]:
            out = out + t
        return out

    def torch_source(self, s):
        return s.infix("+", f"{s.helper('shape_broadcast')}({', '.join(o.shape for o in s.operands)})")


@register
class Mul(_Merge):
    name = "mul"
    doc = "element-wise product of tensors (broadcasting: [N, C, H, W] * [N, C, 1, 1] scales channels)"

    def infer_shape(self, attrs, shapes):
        return broadcast(self.name, shapes)

    def to_onnx(self, b, layer, inputs, weights):
        out = inputs[0]
        for i, t in enumerate(inputs[1:], 1):
            out = b.node("Mul", [out, t], layer.name if i == len(inputs) - 1 else b.fresh(f"{layer.name}/mul{i}"))
        return out

    def torch_ref(self, attrs, inputs, weights):
        out = inputs[0]
        for t in inputs[1:]:
            out = out * t
        return out

    def torch_source(self, s):
        return s.infix("*", f"{s.helper('shape_broadcast')}({', '.join(o.shape for o in s.operands)})")


class _Binary(_Merge):
    """An element-wise merge of exactly two tensors, broadcasting like add and mul."""

    onnx_op = ""
    combine = None  # the torch function: torch.sub, torch.div

    def infer_shape(self, attrs, shapes):
        if len(shapes) != 2:
            raise CnnError(f"{self.name}: takes two tensors, got {len(shapes)}")
        return broadcast(self.name, shapes)

    def to_onnx(self, b, layer, inputs, weights):
        return b.node(self.onnx_op, inputs, layer.name)

    def torch_ref(self, attrs, inputs, weights):
        return type(self).combine(inputs[0], inputs[1])

    def torch_source(self, s):
        shape = f"{s.helper('shape_broadcast')}({', '.join(o.shape for o in s.operands)})"
        return s.expression(f"torch.{self.name}({', '.join(o.fwd for o in s.operands)})", shape)


def _binary(name: str, onnx_op: str, torch_fn: str, doc: str) -> None:
    """Register an element-wise merge of two tensors that is one ONNX op and one torch function."""

    def combine(a, b):
        import torch

        return getattr(torch, torch_fn)(a, b)

    register(type(name.title(), (_Binary,), {"name": name, "onnx_op": onnx_op, "doc": doc,
                                             "combine": staticmethod(combine)}))


# name   ONNX op  torch function  doc
_binary("sub", "Sub", "sub", "element-wise difference a - b (broadcasting)")
_binary("div", "Div", "div", "element-wise quotient a / b (broadcasting)")


@register
class Concat(_Merge):
    name = "concat"
    params = (Param("axis", "int", 1),)
    doc = "concatenation along channels (axis=1) or another axis"

    def normalize(self, args, shapes):
        return {"axis": normalize_axis(self.name, args["axis"], len(shapes[0]))}

    def infer_shape(self, attrs, shapes):
        axis, rank = attrs["axis"], len(shapes[0])
        total = 0
        for s in shapes:
            if len(s) != rank:
                raise CnnError(f"concat: shapes {fmt_shape(shapes[0])} and {fmt_shape(s)} differ in rank")
            for i in range(rank):
                if i != axis and not same_size(s[i], shapes[0][i]):
                    raise CnnError(f"concat: shapes {fmt_shape(shapes[0])} and {fmt_shape(s)} differ in "
                                   f"{dim_name(i, rank)}" + mismatch_hint(s[i], shapes[0][i]))
            total = add(total, s[axis])
        out = list(shapes[0])
        out[axis] = total
        return tuple(out)

    def to_onnx(self, b, layer, inputs, weights):
        return b.node("Concat", inputs, layer.name, axis=layer.attrs["axis"])

    def torch_ref(self, attrs, inputs, weights):
        import torch

        return torch.cat(inputs, dim=attrs["axis"])

    def torch_source(self, s):
        items, shapes = ", ".join(o.fwd for o in s.operands), ", ".join(o.shape for o in s.operands)
        axis = s.arg("axis")
        shape = f"{s.helper('shape_concat')}([{shapes}]" + (f", {s.arg('axis', 'init')})" if s.given("axis") else ")")
        return s.expression(f"torch.cat([{items}], {axis or 1})", shape)
