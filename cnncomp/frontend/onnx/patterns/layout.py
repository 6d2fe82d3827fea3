"""Tensor layout: Flatten and flattening Reshapes, shuffles, pixel (un)shuffle, Resize, Pad, Slice."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cnncomp.frontend.onnx.model import SYMBOLIC_DIM, OnnxModel, attrs_of
from cnncomp.frontend.onnx.patterns.base import (
    Match, Unsupported, const_input, has_param, has_param_choice, matcher, num, require_op, scalar, single,
    unknown_shape,
)
from cnncomp.frontend.onnx.patterns.shape_reads import DimOf, shape_values
from cnncomp.ops.registry import compact, padding_arg


@matcher("Flatten")
def flatten(m: OnnxModel, node):
    return Match("flatten", {"axis": int(attrs_of(node).get("axis", 1))}, [node.input[0]], node.output[0], [node])


@matcher("Squeeze")
def squeeze(m: OnnxModel, node):
    """Squeezes of [N, C, 1, ...] down to [N, C] (one or a chain: `.squeeze(-1).squeeze(-1)`) -> flatten."""
    nodes, source = [node], node.input[0]
    while (earlier := single(m, source, nodes[0], "Squeeze")) is not None:
        nodes.insert(0, earlier)
        source = earlier.input[0]
    shape, out = m.shapes.get(source), m.shapes.get(node.output[0])
    if shape is None or out is None:
        raise unknown_shape(m, source, "the shape of the Squeeze's input")
    if len(out) == 2 and len(shape) > 2 and tuple(shape[:2]) == tuple(out) and all(d == 1 for d in shape[2:]):
        return Match("flatten", {"axis": 1}, [source], node.output[0], nodes)
    raise Unsupported(f"a Squeeze from {list(shape)} to {list(out)} is not a flatten of [N, C, 1, ...]")


def reshape_target(m: OnnxModel, node) -> list[int | str] | None:
    """The Reshape's target with 0 and the batch marker resolved against its input's shape; None if unknown."""
    target = m.const(node.input[1])
    shape = m.shapes.get(node.input[0])
    if target is None or shape is None:
        return None
    out: list[int | str] = []
    for i, t in enumerate(target.tolist()):
        if t == 0 and not attrs_of(node).get("allowzero", 0):
            out.append(shape[i])
        elif t == SYMBOLIC_DIM:
            out.append("dyn")
        else:
            out.append(int(t))
    return out


@matcher("Reshape")
def reshape(m: OnnxModel, node):
    from cnncomp.frontend.onnx.patterns.channel_conv import eca

    for pattern in (_shuffle, _pixel_shuffle, eca):
        found = pattern(m, node)
        if found is not None:
            return found
    shape = m.shapes.get(node.input[0])
    if shape is None:
        raise unknown_shape(m, node.input[0], "the shape of the Reshape's input")
    target = reshape_target(m, node)
    if target is None:
        raise Unsupported("a Reshape whose target is computed at run time")
    if len(target) == 2 and (target[0] in ("dyn", shape[0]) or target[0] == shape[0]):
        rest = [d for d in shape[1:]]
        if target[1] == -1 or (all(isinstance(d, int) for d in rest) and target[1] == math.prod(rest)):
            return Match("flatten", {"axis": 1}, [node.input[0]], node.output[0], [node])
    kept = _kept_leading(shape, target)
    if kept is not None:
        return Match("flatten", {"axis": kept, "keep_leading": True}, [node.input[0]], node.output[0], [node])
    raise Unsupported(f"a Reshape from {list(shape)} to {target} is not a flatten, shuffle or pixel shuffle")


@dataclass
class _Chain:
    """Reshape(Transpose(Reshape(x))) ending at a Reshape: its nodes, x, and the shapes and permutation a
    matcher compares (None where a shape is unknown)."""

    split: object
    transpose: object
    x: str
    shape: tuple | None  # of x
    out: tuple | None  # of the last Reshape's output
    target: tuple | None  # the first Reshape's target shape
    perm: list

    def nodes(self, last) -> list:
        return [self.split, self.transpose, last]


def _kept_leading(shape, target) -> int | None:
    """k when the Reshape keeps the input's first k >= 2 dims and merges the rest into one ([N, C, -1] in
    detection heads: YOLOX, PicoDet), else None."""
    kept = len(target) - 1
    if kept < 2 or kept >= len(shape) or target[0] not in ("dyn", shape[0]):
        return None
    if any(t != d for t, d in zip(target[1:kept], shape[1:kept])):
        return None
    rest = shape[kept:]
    if target[-1] == -1 or (all(isinstance(d, int) for d in rest) and target[-1] == math.prod(rest)):
        return kept
    return None


def _reshape_transpose_reshape(m: OnnxModel, node) -> _Chain | None:
    """The chain when `node`, a Reshape, ends Reshape-Transpose-Reshape with each feeding only the next; else
    None."""
    transpose = single(m, node.input[0], node, "Transpose")
    if transpose is None:
        return None
    split = single(m, transpose.input[0], transpose, "Reshape")
    if split is None:
        return None
    return _Chain(split, transpose, split.input[0], m.shapes.get(split.input[0]), m.shapes.get(node.output[0]),
                  reshape_target(m, split), list(attrs_of(transpose).get("perm", [])))


def _shuffle(m: OnnxModel, node) -> Match | None:
    """Reshape(Transpose(Reshape(x, [N, g, C/g, ...]), swap 1 and 2), shape of x) -> shuffle(g)."""
    c = _reshape_transpose_reshape(m, node)
    if c is None or c.shape is None or c.target is None or c.out is None or len(c.target) < 3 \
            or tuple(c.out) != tuple(c.shape):
        return None
    if c.perm != [0, 2, 1] + list(range(3, len(c.target))):
        return None
    groups, per_group = c.target[1], c.target[2]
    if not isinstance(c.shape[1], int) or not isinstance(groups, int) or groups * per_group != c.shape[1]:
        return None
    return Match("shuffle", {"groups": groups}, [c.x], node.output[0], c.nodes(node))


def _pixel_shuffle(m: OnnxModel, node) -> Match | None:
    """The 6-D Reshape-Transpose-Reshape of F.pixel_shuffle / F.pixel_unshuffle (2-D) -> pixel_(un)shuffle(r)."""
    c = _reshape_transpose_reshape(m, node)
    if c is None or c.shape is None or c.out is None or c.target is None or len(c.shape) != 4 \
            or len(c.target) != 6 or len(c.out) != 4:
        return None
    shape, out, target, perm, x = c.shape, c.out, c.target, c.perm, c.x
    if perm == [0, 1, 4, 2, 5, 3] and isinstance(target[2], int) and target[2] == target[3]:
        r = target[2]
        if out[1] == shape[1] // (r * r) if isinstance(shape[1], int) else False:
            require_op("pixel_shuffle", "a pixel-shuffle Reshape-Transpose-Reshape")
            return Match("pixel_shuffle", {"r": r}, [x], node.output[0], c.nodes(node))
    if perm == [0, 1, 3, 5, 2, 4] and isinstance(target[3], int) and target[3] == target[5]:
        r = target[3]
        require_op("pixel_unshuffle", "a pixel-unshuffle Reshape-Transpose-Reshape")
        return Match("pixel_unshuffle", {"r": r}, [x], node.output[0], c.nodes(node))
    return None


@matcher("DepthToSpace")
def depth_to_space(m: OnnxModel, node):
    a = attrs_of(node)
    r = int(a["blocksize"])
    channels_out = (m.shapes.get(node.output[0]) or (None, None))[1]
    if a.get("mode", "DCR") != "CRD" and channels_out != 1:
        raise Unsupported("DepthToSpace in DCR mode orders channels unlike pixel_shuffle (CRD); "
                          "export with PyTorch's pixel_shuffle (CRD)")
    require_op("pixel_shuffle", "DepthToSpace")
    return Match("pixel_shuffle", {"r": r}, [node.input[0]], node.output[0], [node])


@matcher("SpaceToDepth")
def space_to_depth(m: OnnxModel, node):
    r = int(attrs_of(node)["blocksize"])
    channels_in = (m.shapes.get(node.input[0]) or (None, None))[1]
    if channels_in != 1:
        raise Unsupported("SpaceToDepth puts the block offset before the channel, unlike pixel_unshuffle "
                          "(the same only for 1 input channel)")
    require_op("pixel_unshuffle", "SpaceToDepth")
    return Match("pixel_unshuffle", {"r": r}, [node.input[0]], node.output[0], [node])


@matcher("Resize", "Upsample")
def resize(m: OnnxModel, node):
    a = attrs_of(node)
    shape = m.shapes.get(node.input[0])
    out = m.shapes.get(node.output[0])
    mode = a.get("mode", "nearest")
    coord = a.get("coordinate_transformation_mode", "half_pixel")
    scales = m.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = m.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if scales is not None and scales.size == 0:
        scales = None
    args: dict = {}
    read: list = []  # the nodes that read sizes from a shape at run time
    if scales is None and len(node.input) > 3 and node.input[3] and (sizes is None or np.any(sizes == SYMBOLIC_DIM)):
        args["size"] = _sizes_read_from_shapes(m, node, read)
    elif scales is not None:
        if list(scales[:2]) != [1, 1]:
            raise Unsupported("it resizes the batch or channel dims")
        args["scale"] = compact(tuple(num(float(s)) for s in scales[2:]))
    elif sizes is not None or (out is not None and all(isinstance(d, int) for d in out[2:])):
        target = [int(s) for s in sizes[2:]] if sizes is not None else list(out[2:])
        if shape is not None and all(isinstance(d, int) for d in shape[2:]) and \
                all(t % n == 0 for t, n in zip(target, shape[2:])) and not has_param("upsample", "size"):
            args["scale"] = compact(tuple(t // n for t, n in zip(target, shape[2:])))
        elif has_param("upsample", "size"):
            args["size"] = compact(tuple(target))
        else:
            raise Unsupported(f"it resizes to sizes {target}, which upsample(scale=) cannot say")
    else:
        raise Unsupported("its scales and sizes are computed at run time")
    nearest_mode = a.get("nearest_mode", "round_prefer_floor")
    if mode == "nearest":
        if coord == "asymmetric" and nearest_mode == "floor":
            args["mode"] = "nearest"  # F.interpolate's nearest
        elif coord == "half_pixel" and nearest_mode == "round_prefer_ceil" and \
                has_param_choice("upsample", "mode", "nearest-exact"):
            args["mode"] = "nearest-exact"  # F.interpolate's nearest-exact
        elif has_param_choice("upsample", "coordinates", coord) and has_param_choice("upsample", "rounding",
                                                                                    nearest_mode):
            args.update(mode="nearest", coordinates=coord, rounding=nearest_mode)
        else:
            raise Unsupported(f"nearest with coordinate_transformation_mode={coord} and nearest_mode="
                              f"{nearest_mode} is not F.interpolate's nearest (asymmetric, floor)")
    elif mode in ("linear", "cubic"):
        if mode == "cubic" and (abs(a.get("cubic_coeff_a", -0.75) + 0.75) > 1e-6 or a.get("exclude_outside", 0)):
            raise Unsupported("cubic Resize with coefficients other than PyTorch's (a=-0.75)")
        if mode == "cubic" and not has_param_choice("upsample", "mode", "cubic"):
            raise Unsupported("cubic Resize maps to upsample(mode=\"cubic\"), which this cnncomp does not have yet")
        args["mode"] = mode
        if coord == "align_corners":
            if not has_param("upsample", "align_corners"):
                raise Unsupported("align_corners Resize maps to upsample(align_corners=true), which this "
                                  "cnncomp does not have yet")
            args["align_corners"] = True
        elif coord in ("asymmetric", "half_pixel_symmetric") and mode == "linear" and \
                has_param_choice("upsample", "coordinates", coord):
            args["coordinates"] = coord
        elif coord not in ("pytorch_half_pixel", "half_pixel"):
            raise Unsupported(f"coordinate_transformation_mode={coord} is not one of F.interpolate's")
    else:
        raise Unsupported(f"Resize mode {mode} has no layer")
    return Match("upsample", args, [node.input[0]], node.output[0], _unique(read) + [node])


def _sizes_read_from_shapes(m: OnnxModel, node, read: list) -> tuple:
    """The spatial sizes of a Resize whose sizes are read from tensors' shapes at run time (ints and DimOfs);
    its batch and channel sizes must be its input's own."""
    if not has_param("upsample", "size"):
        raise Unsupported("its sizes are computed at run time, and this cnncomp's upsample has no size=")
    values = shape_values(m, node.input[3], read)
    shape = m.shapes.get(node.input[0])
    if shape is None or len(values) != len(shape):
        raise Unsupported("its sizes are computed at run time and their number is not its input's rank")
    for axis in (0, 1):
        same = values[axis] == DimOf(node.input[0], axis) or (isinstance(values[axis], int)
                                                              and values[axis] == shape[axis])
        if not same:
            raise Unsupported("it resizes the batch or channel dims")
    return tuple(values[2:])


def _unique(nodes: list) -> list:
    seen: set[int] = set()
    return [n for n in nodes if not (id(n) in seen or seen.add(id(n)))]


@matcher("Pad")
def pad(m: OnnxModel, node):
    a = attrs_of(node)
    mode = a.get("mode", "constant")
    pads = const_input(m, node, 1, "pads")
    value = scalar(const_input(m, node, 2, "constant value")) or 0.0
    if len(node.input) > 3 and node.input[3]:
        raise Unsupported("Pad with axes is not read")
    if pads is None or pads.ndim != 1 or pads.size % 2 or pads.size < 4:
        raise Unsupported("its pads are not a list of begin and end pads for every dim")
    rank = len(pads) // 2
    if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        raise Unsupported("it pads the batch or channel dims")
    spatial = tuple(int(p) for p in list(pads[2:rank]) + list(pads[rank + 2:]))
    args = {"p": padding_arg(spatial)}
    if mode != "constant":
        torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
        if torch_mode is None or not has_param_choice("pad", "mode", torch_mode):
            raise Unsupported(f"Pad mode {mode} maps to pad(mode=\"{torch_mode}\"), which this cnncomp does not have yet")
        args["mode"] = torch_mode
    elif value:
        args["value"] = num(value)
    return Match("pad", args, [node.input[0]], node.output[0], [node])


@matcher("Slice")
def slice_(m: OnnxModel, node):
    starts, ends = const_input(m, node, 1, "starts"), const_input(m, node, 2, "ends")
    axes = const_input(m, node, 3, "axes")
    steps = const_input(m, node, 4, "steps")
    if starts.size != 1:
        raise Unsupported("a Slice over several axes has no layer (slice keeps one axis)")
    step = 1 if steps is None else int(steps.reshape(-1)[0])
    if step < 1:
        raise Unsupported(f"a Slice with step {step}; slice steps forward only")
    shape = m.shapes.get(node.input[0])
    axis = int(axes.reshape(-1)[0]) if axes is not None else 0
    if shape is None:
        raise unknown_shape(m, node.input[0], "the shape of the Slice's input")
    axis %= len(shape)
    size = shape[axis]
    if size is None:
        raise unknown_shape(m, node.input[0], f"dim {axis} of the Slice's input")
    if not isinstance(size, int):
        raise Unsupported("a Slice along a dynamic dim")
    start, end = (int(np.clip(v if v >= 0 else v + size, 0, size)) for v in (int(starts[0]), int(ends[0])))
    args = {"start": start, "end": end, "axis": axis} | ({"step": step} if step != 1 else {})
    return Match("slice", args, [node.input[0]], node.output[0], [node])
