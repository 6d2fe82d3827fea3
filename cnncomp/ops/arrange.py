"""Layers that rearrange a tensor's axes or cut it into parts: permute and split."""

from __future__ import annotations

from cnncomp.errors import CnnError
from cnncomp.ops.registry import Op, Param, fmt_value, normalize_axis, positive_ints, register


@register
class Permute(Op):
    """out.shape[i] = x.shape[dims[i]], as Tensor.permute; dims[0] must be 0 (the batch stays first)."""

    name = "permute"
    params = (Param("dims", "ints"),)
    doc = "reorder the axes as Tensor.permute(dims); the batch stays first"

    def normalize(self, args, shapes):
        rank = len(shapes[0])
        dims = args["dims"] if isinstance(args["dims"], tuple) else (args["dims"],)
        perm = tuple(normalize_axis(self.name, d, rank) for d in dims)
        if sorted(perm) != list(range(rank)):
            raise CnnError(f"permute: dims {fmt_value(dims)} must name each of the {rank} axes once")
        if perm[0] != 0:
            raise CnnError(f"permute: dims {fmt_value(dims)} move the batch axis; it stays first (dims[0] = 0)")
        return {"dims": perm}

    def infer_shape(self, attrs, shapes):
        return tuple(shapes[0][d] for d in attrs["dims"])

    def to_onnx(self, b, layer, inputs, weights):
        return b.node("Transpose", [inputs[0]], layer.name, perm=list(layer.attrs["dims"]))

    def torch_ref(self, attrs, inputs, weights):
        return inputs[0].permute(*attrs["dims"])

    def torch_source(self, s):
        shape = f"{s.helper('shape_permute')}({s.shape}, {s.arg('dims', 'init')})"
        return s.expression(f"{s.atom()}.permute({s.arg('dims')})", shape)


@register
class Split(Op):
    """Part `part` of `sizes` along `axis`: positions sum(sizes[:part]) .. sum(sizes[:part + 1]) - 1.

    A spec binds every part at once, `a, b = x -> split((16, 16))` (one layer per part, each
    named after its name); `x -> split((16, 16), part=1)` is one part alone (what --emit cnn
    writes). `sizes` must add up to the axis's size."""

    name = "split"
    params = (Param("sizes", "ints"), Param("axis", "int", 1), Param("part", "int", None))
    doc = "one part of a split along axis into sizes; `a, b = x -> split(sizes)` binds every part"

    def normalize(self, args, shapes):
        shape = shapes[0]
        sizes = args["sizes"] if isinstance(args["sizes"], tuple) else (args["sizes"],)
        positive_ints(sizes, "split: sizes")
        axis = normalize_axis(self.name, args["axis"], len(shape))
        if axis == 0:
            raise CnnError("split: axis 0 is the batch, which stays whole")
        if not isinstance(shape[axis], int):
            raise CnnError(f"split: axis {axis} has a dynamic size '{shape[axis]}'")
        if sum(sizes) != shape[axis]:
            raise CnnError(f"split: sizes {fmt_value(sizes)} add up to {sum(sizes)}, but axis {axis} has "
                           f"{shape[axis]} positions")
        part = args.get("part")
        if part is None:
            raise CnnError(f"split: makes {len(sizes)} parts: bind each to its own name "
                           f"(`a, b = x -> split(...)`) or choose one with part=")
        if not 0 <= part < len(sizes):
            raise CnnError(f"split: part {part} is out of range for {len(sizes)} parts")
        return {"sizes": sizes, "axis": axis, "part": part}

    def spec_args(self, attrs):
        return {"sizes": attrs["sizes"], "axis": attrs["axis"], "part": attrs["part"]}

    @staticmethod
    def bounds(attrs) -> tuple[int, int]:
        """(start, end) of the layer's part along its axis."""
        start = sum(attrs["sizes"][:attrs["part"]])
        return start, start + attrs["sizes"][attrs["part"]]

    def infer_shape(self, attrs, shapes):
        shape = list(shapes[0])
        shape[attrs["axis"]] = attrs["sizes"][attrs["part"]]
        return tuple(shape)

    def to_onnx(self, b, layer, inputs, weights):
        start, end = self.bounds(layer.attrs)
        return b.node("Slice", [inputs[0], b.const_int64([start], layer.name + "/starts"),
                                b.const_int64([end], layer.name + "/ends"),
                                b.const_int64([layer.attrs["axis"]], layer.name + "/axes")], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        return inputs[0].split(list(attrs["sizes"]), dim=attrs["axis"])[attrs["part"]]

    def torch_source(self, s):
        shape = f"{s.helper('shape_split')}({', '.join([s.shape] + s.keywords(['sizes', 'axis', 'part']))})"
        return s.function(s.helper("split_part"), *s.written(), shape=shape)
