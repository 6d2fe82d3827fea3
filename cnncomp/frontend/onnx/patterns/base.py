"""What every pattern shares: the Match a pattern returns, the matcher table, and small readers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from cnncomp.frontend.onnx.model import OnnxModel
from cnncomp.ops.registry import compact, get_op, padding_arg


class Unsupported(Exception):
    """A node the importer cannot turn into a layer; the message says why."""


@dataclass
class Match:
    """One layer found in the ONNX graph."""

    op: str
    args: dict
    inputs: list[str]  # ONNX tensors feeding the layer, in the layer's slot order
    output: str  # the ONNX tensor the layer produces
    nodes: list[onnx.NodeProto]  # every node the layer absorbs (the anchor last)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # suffix -> array

    @property
    def anchor(self) -> onnx.NodeProto:
        return self.nodes[-1]


Matcher = Callable[[OnnxModel, onnx.NodeProto], "Match | list[Match] | None"]  # a list: a layer per output
MATCHERS: dict[str, list[Matcher]] = {}


def matcher(*op_types: str):
    def deco(fn: Matcher) -> Matcher:
        for op_type in op_types:
            MATCHERS.setdefault(op_type, []).append(fn)
        return fn
    return deco


def require_op(name: str, onnx_op: str) -> None:
    """Refuse a pattern whose layer the registry does not have (yet)."""
    if get_op(name) is None:
        raise Unsupported(f"{onnx_op} maps to the layer '{name}', which this cnncomp does not register")


def has_param(op_name: str, param: str) -> bool:
    op = get_op(op_name)
    return op is not None and any(p.name == param for p in op.params)


def const_input(m: OnnxModel, node: onnx.NodeProto, index: int, what: str) -> np.ndarray | None:
    if len(node.input) <= index or not node.input[index]:
        return None
    value = m.const(node.input[index])
    if value is None:
        raise Unsupported(f"its {what} is computed at run time; the importer needs it constant")
    return value


def unknown_shape(m: OnnxModel, tensor: str, what: str) -> Unsupported:
    """The refusal of a pattern that needs a shape inference did not work out, naming the node where it was
    lost."""
    blocker = m.shape_blocker(tensor)
    if blocker is None:
        return Unsupported(f"{what} is unknown")
    return Unsupported(f"{what} is unknown: ONNX shape inference loses it at node "
                       f"'{blocker.name or blocker.output[0]}' ({blocker.op_type})")


def single(m: OnnxModel, tensor: str, user: onnx.NodeProto, op_type: str) -> onnx.NodeProto | None:
    """The producer of `tensor` if it has op type `op_type` and `user` is its only reader."""
    node = m.producer_of(tensor, op_type)
    if node is not None and m.single_user(tensor, user):
        return node
    return None


def scalar(value: np.ndarray | None) -> float | None:
    if value is None or value.size != 1:
        return None
    return float(value.reshape(-1)[0])


def num(value: float):
    """An int where the value is integral (for readable arguments), else the float."""
    return int(value) if float(value).is_integer() else float(value)


def window_args(a: dict, rank: int, with_dilation: bool = True) -> dict:
    pads = tuple(a.get("pads", [0] * 2 * rank))
    args = {"k": compact(tuple(a["kernel_shape"])), "s": compact(tuple(a.get("strides", [1] * rank))),
            "p": padding_arg(pads)}
    if with_dilation:
        args["d"] = compact(tuple(a.get("dilations", [1] * rank)))
    return args


def auto_pad(m: OnnxModel, node: onnx.NodeProto, a: dict) -> None:
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise Unsupported(f"auto_pad={a['auto_pad']} is not read; export with explicit pads")



def round_float(value: float) -> float:
    """A float32 attribute as the short decimal it was written as (1e-05, not 9.999999747378752e-06)."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-")) if value else 0.0


def has_param_choice(op_name: str, param: str, choice: str) -> bool:
    op = get_op(op_name)
    return op is not None and any(p.name == param and (not p.choices or choice in p.choices) for p in op.params)


def no_const_operands(m: OnnxModel, node) -> None:
    for name in node.input:
        if m.is_const(name):
            raise Unsupported(f"{node.op_type} with a constant operand has no layer (a layer's operands are tensors)")


# The nearest thing the language has, for an op type no pattern takes (or takes only in some forms): said
# after the reason in the import's error, so that a user knows what to rewrite the model with.
NEAREST = {
    "Reshape": "flatten ([N, -1]; [N, C, -1] with keep_leading), shuffle (a channel shuffle's "
               "Reshape-Transpose-Reshape) and pixel_shuffle are the reshapes the language has",
    "Unsqueeze": "no layer adds an axis (flatten removes them)",
    "Squeeze": "flatten, where the squeezed tensor is [N, C, 1, 1]",
    "Gather": "slice(start, end, axis) takes a range along one axis; no layer indexes",
    "Slice": "slice(start, end, axis, step) takes one axis, stepping forward; split cuts an axis into parts",
    "MatMul": "linear (a constant 2-D weight); no layer multiplies two computed matrices",
    "Gemm": "linear (a constant weight)",
    "LSTM": "no recurrent layers", "GRU": "no recurrent layers", "RNN": "no recurrent layers",
    "Pow": "no power layer (mul squares a tensor: x * x)",
    "Sqrt": "no root layer (layer_norm and gn hold the roots of norms)",
    "ReduceMax": "gmp (the max over the spatial axes); mean and sum reduce any axes",
    "ReduceL2": "mean and sum reduce any axes; no norm layer",
    "ConstantOfShape": "none: a layer's operands are tensors computed from the inputs, weights are per layer",
    "Transpose": "permute(dims) with the batch first",
    "Expand": "add, mul, sub and div broadcast their operands",
    "Tile": "concat of the same tensor",
    "Cast": "none: every layer keeps its input's float type",
    "Resize": "upsample(scale= or size=, mode=, align_corners=)",
    "Add": "shift (a constant per channel), add (two tensors)",
    "Mul": "scale (a constant per channel), mul (two tensors)",
    "Sub": "shift (x - c), sub (two tensors)",
    "Div": "scale (x / c), div (two tensors)",
    "Concat": "concat(axis) of computed tensors",
}
