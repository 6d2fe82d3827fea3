"""The op registry: one definition per op, with every facet of it.

An op is a subclass of `Op`, registered with `@register`. It defines, in one
place: its language arguments and defaults (`params`), how they normalize
against its input shapes (`normalize`), its shape rule (`infer_shape`), its
weights (`weight_specs`, with initializers), its multiply-accumulate count
(`macs`), its receptive-field step (`window`), its ONNX lowering (`to_onnx`),
its PyTorch reference (`torch_ref`) and its PyTorch source for --emit torch
(`torch_source`); and the facts other parts of the compiler ask about it: its
`category` (pictures), whether a kernel slides over its input
(`sliding_window`: advice), whether it keeps the sampling grid (`keeps_grid`:
advice), and whether a batch norm folds into it along which axis (`folds_bn`,
`folds_bn_before`, `channel_axis`: the fold-bn pass), and whether its output
holds class scores (`decision_axis`, `keeps_values`: int8's task metrics).
`tests/test_ops_registry.py` checks that every registered op overrides every
facet it must and that the facts agree with the shape rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from cnncomp.errors import CnnError
from cnncomp.ops import dims
from cnncomp.ops.dims import is_static

REQUIRED = object()

# Facets every op must define itself (never inherit from Op).
FACETS = ("infer_shape", "to_onnx", "torch_ref")

# The categories of `Op.category` (a picture gives each its colour).
CATEGORIES = ("conv", "linear", "norm", "act", "pool", "merge", "other")


@dataclass(frozen=True)
class Param:
    """A language argument of an op: name, kind and default (REQUIRED if none)."""

    name: str
    kind: str  # int, float, number, bool, str, spatial, padding, scale, ints (an int or a tuple of them), tensor
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class WeightSpec:
    """A weight tensor of a layer: its shape, whether it is a learnable parameter, its initializer."""

    shape: tuple[int, ...]
    learnable: bool = True
    init: str = "uniform_fan_in"  # uniform_fan_in, ones, zeros, bn_weight, bn_bias, bn_mean, bn_var, prelu
    fan_in: int = 1


@dataclass(frozen=True)
class Window:
    """How a layer maps positions, per spatial dim: effective kernel and stride (for receptive fields)."""

    kernel: tuple[float, ...]
    stride: tuple[float, ...]
    global_: tuple[bool, ...] = ()


class Op:
    """Base of every op; subclasses override the facets."""

    name: str = ""
    params: tuple[Param, ...] = ()
    variadic: bool = False  # takes any number of tensor arguments (merges)
    min_rank: int = 2
    spatial_only: bool = False  # needs rank 3..5 (N, C, *spatial)
    doc: str = ""

    # ---- facts other parts of the compiler ask about -----------------------

    category: str = "other"  # one of CATEGORIES
    # A kernel slides over the spatial dims: attrs has kernel, stride, pads and dilation.
    sliding_window: bool = False
    # Output position p of every spatial axis reads only input position p (a dilated-conv
    # stack is traced through the layer when looking for gridding).
    keeps_grid: bool = False
    # out[.., o, ..] = sum_i W[o, i, ..] x[.., i, ..] + b[o] along `channel_axis`: a batch norm
    # on that axis after the layer folds into `weight` (axis 0) and `bias`; with
    # folds_bn_before, one before it folds into the weight's input axis (axis 1).
    folds_bn: bool = False
    folds_bn_before: bool = False
    # The output holds the input's values unchanged, at most reshaped (identity, dropout at inference, flatten):
    # int8's task metrics look through it for the classifier head that makes an output class scores.
    keeps_values: bool = False

    def constant_affine(self, attrs: dict[str, Any], weights: dict[str, np.ndarray]):
        """(s, t), float64 vectors over the channels (axis 1), when the layer computes x * s + t from its weights
        alone (scale, shift: the fold-scale-shift pass folds it into a conv or linear beside it); else None."""
        return None

    def channel_axis(self, attrs: dict[str, Any], rank: int) -> int | None:
        """The axis of the input and output tensors that the weight's channel axes index (folds_bn ops)."""
        return None

    def decision_axis(self, attrs: dict[str, Any], rank: int) -> int | None:
        """The axis along which this op's output holds scores that a decision (argmax) is taken over, when the
        op is a classifier's head (softmax along its axis; linear along its features), else None: int8's task
        metrics (verification/metrics.py) judge such an output by top-1 agreement, others by relative L2."""
        return None

    def output_channel_scale(self, attrs: dict[str, Any], scale: np.ndarray, weight_shape: tuple) -> np.ndarray:
        """`scale` (one value per output channel) shaped to multiply the weight (folds_bn ops): by default
        the output channels are the weight's axis 0."""
        return scale.reshape((-1,) + (1,) * (len(weight_shape) - 1))

    # ---- shapes and arguments -------------------------------------------

    def normalize(self, args: dict[str, Any], shapes: list[tuple]) -> dict[str, Any]:
        """Check the arguments against the input shapes; return the normalized attributes."""
        return dict(args)

    def infer_shape(self, attrs: dict[str, Any], shapes: list[tuple]) -> tuple:
        raise NotImplementedError

    def spec_args(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Language arguments that recreate these normalized attributes (for --emit cnn)."""
        return {p.name: attrs[p.name] for p in self.params if p.name in attrs and p.kind != "tensor"}

    def instantiate(self, args: dict[str, Any], shapes: list[tuple]) -> tuple[dict, tuple, dict]:
        """(attributes, output shape, weight specs) of a layer with these arguments, defaults filled in.

        How a pass makes a new layer: the same normalization, shape rule and weights as a spec's."""
        given = {p.name: p.default for p in self.params if p.default is not REQUIRED and p.kind != "tensor"}
        given.update(args)
        attrs = self.normalize(given, shapes)
        return attrs, self.infer_shape(attrs, shapes), self.weight_specs(attrs, shapes)

    # ---- weights and cost -----------------------------------------------

    def weight_specs(self, attrs: dict[str, Any], shapes: list[tuple]) -> dict[str, WeightSpec]:
        return {}

    def macs(self, attrs: dict[str, Any], shapes: list[tuple], out: tuple) -> int:
        return 0

    def window(self, attrs: dict[str, Any], shapes: list[tuple]) -> Window | None:
        """The receptive-field step of this layer; None for a point-wise layer."""
        return None

    # ---- back-ends --------------------------------------------------------

    def to_onnx(self, b, layer, inputs: list[str], weights: dict[str, str]) -> str:
        raise NotImplementedError

    def torch_ref(self, attrs: dict[str, Any], inputs: list, weights: dict[str, Any]):
        raise NotImplementedError

    def torch_train(self, attrs: dict[str, Any], inputs: list, weights: dict[str, Any]):
        """The training form (cnncomp.to_torch in train() mode); the inference form unless overridden."""
        return self.torch_ref(attrs, inputs, weights)

    def torch_source(self, s):
        """The layer in generated PyTorch source (--emit torch), written through `s`, a
        cnncomp.emit.torch.layers.LayerSource (`s.module()` for a layer with weights, `s.function(...)`
        for a call in forward, ...). An op without one stops --emit torch with a located error."""
        return s.no_translation()


OPS: dict[str, Op] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: add an op to the registry under its `name`."""
    op = cls()
    if op.name in OPS:
        raise ValueError(f"op '{op.name}' registered twice")
    OPS[op.name] = op
    return cls


def get_op(name: str) -> Op | None:
    _load_all()
    return OPS.get(name)


def all_ops() -> dict[str, Op]:
    _load_all()
    return OPS


def _load_all() -> None:
    from cnncomp.ops import activation, arrange, conv, merge, norm, pool, reduce, resize, tensor  # noqa: F401


# ---- helpers shared by op definitions ---------------------------------------

def spatial_rank(shape: tuple) -> int:
    return len(shape) - 2


def as_tuple(value, rank: int, what: str) -> tuple:
    """Expand an int to one value per spatial dim; check a tuple's length."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value,) * rank
    if isinstance(value, tuple):
        if len(value) != rank:
            raise CnnError(f"{what} has {len(value)} values, expected {rank} (one per spatial dim)")
        return value
    raise CnnError(f"{what} must be a number or a tuple, got {describe(value)}")


def normalize_axis(op_name: str, axis: int, rank: int, allow_end: bool = False) -> int:
    """An axis in [-rank, rank) (or [-rank, rank] with allow_end) as a non-negative index."""
    top = rank if allow_end else rank - 1
    if not -rank <= axis <= top:
        raise CnnError(f"{op_name}: axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def normalize_axes(op_name: str, axes, rank: int) -> tuple[int, ...]:
    """An int or a tuple of axes (ints or tuples, the `ints` kind) as sorted non-negative indices, each once;
    never the batch axis 0, which every layer keeps."""
    values = axes if isinstance(axes, tuple) else (axes,)
    if not values:
        raise CnnError(f"{op_name}: axes must name at least one axis")
    out = tuple(sorted(normalize_axis(op_name, a, rank) for a in values))
    if len(set(out)) != len(out):
        raise CnnError(f"{op_name}: axes {fmt_value(axes)} name an axis twice")
    if 0 in out:
        raise CnnError(f"{op_name}: axes {fmt_value(axes)} include the batch axis 0, which stays")
    return out


def sliding_window_step(attrs: dict[str, Any]) -> Window:
    """The receptive-field step of a sliding window: effective kernel d*(k-1)+1 and stride per dim."""
    return Window(tuple(d * (k - 1) + 1 for k, d in zip(attrs["kernel"], attrs["dilation"])), attrs["stride"])


def positive_ints(values: tuple, what: str, allow_zero: bool = False) -> tuple:
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
            raise CnnError(f"{what} must be {'non-negative' if allow_zero else 'positive'} integers, got {fmt_value(values)}")
    return values


def padding_arg(pads: tuple):
    """ONNX-order pads back to a `p=` argument: one value, one per dim, or begins then ends."""
    rank = len(pads) // 2
    if pads[:rank] != pads[rank:]:
        return tuple(pads)
    if len(set(pads[:rank])) == 1:
        return pads[0]
    return tuple(pads[:rank])


def compact(values: tuple):
    """(3, 3) -> 3; (1, 7) stays."""
    return values[0] if len(set(values)) == 1 else tuple(values)


def same_padding(size, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """Padding (begin, end) that keeps ceil(size/stride) outputs; the extra goes first.

    A symbolic size needs a padding that does not depend on it: always at stride 1, and at a
    larger stride when the constraints make the size a multiple of the stride."""
    eff = dilation * (kernel - 1) + 1
    if is_static(size):
        out = -(-size // stride)
        total = max((out - 1) * stride + eff - size, 0)
    else:
        total = dims.add(dims.mul(dims.ceil_div(size, stride) - 1, stride), eff, dims.mul(size, -1))
        if not is_static(total):
            raise CnnError(f"p=same at stride {stride} pads by how far '{size}' is from a multiple of {stride}: "
                           f"state `where {next(iter(sorted(dims.symbols_of(size))), 'H')} % {stride} == 0` "
                           "on the input, or give the padding explicitly")
        total = max(total, 0)
    return (total + 1) // 2, total // 2


def resolve_padding(p, rank: int, kernel: tuple, stride: tuple, dilation: tuple, spatial: tuple) -> tuple:
    """Padding argument to ONNX pads: (begin_0, ..., begin_r, end_0, ..., end_r)."""
    if p == "same":
        pairs = [same_padding(n, k, s, d) for n, k, s, d in zip(spatial, kernel, stride, dilation)]
        return tuple(b for b, _ in pairs) + tuple(e for _, e in pairs)
    if isinstance(p, str):
        raise CnnError(f"padding must be an integer, a tuple or same, got \"{p}\"")
    if isinstance(p, tuple) and len(p) == 2 * rank:
        return positive_ints(p, "padding", allow_zero=True)
    pads = positive_ints(as_tuple(p, rank, "padding"), "padding", allow_zero=True)
    return pads + pads


def window_output(size, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int,
                  ceil: bool, what: str):
    """The output size of a sliding window: floor((n + p - d*(k-1) - 1)/s) + 1 (ceil mode as PyTorch).

    A symbolic n gives the same formula as an expression of its symbols."""
    eff = dilation * (kernel - 1) + 1
    if not is_static(size):
        span = dims.add(size, pad_begin + pad_end - eff)
        if not ceil:
            return dims.add(dims.floor_div(span, stride), 1)
        # PyTorch drops a last window that starts in the end padding; that never happens when
        # eff >= stride + pad_end (the last start is before n + pad_begin), else it depends on n.
        if eff < stride + pad_end:
            raise CnnError(f"{what}: ceil mode with kernel {kernel}, stride {stride} and end padding {pad_end} "
                           f"drops a last window or not depending on the size '{size}': it must be static")
        return dims.add(dims.ceil_div(span, stride), 1)
    span = size + pad_begin + pad_end - eff
    if span < 0:
        raise CnnError(f"{what}: kernel {kernel}" + (f" (dilation {dilation}, effective {eff})" if dilation > 1 else "")
                       + f" is larger than the padded input size {size + pad_begin + pad_end}")
    if ceil:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + pad_begin:
            out -= 1
    else:
        out = span // stride + 1
    if out <= 0:
        raise CnnError(f"{what}: output size {out} is not positive")
    return out


def numel(shape: tuple):
    """Elements for batch 1: a symbolic batch dim counts as 1; other symbolic dims make the
    count an expression of their symbols (an int when every dim after the batch is static)."""
    if len(shape) < 2 or all(is_static(d) for d in shape[1:]):
        return math.prod(d if is_static(d) else 1 for d in shape)
    return dims.mul(*((shape[0] if is_static(shape[0]) else 1,) + tuple(shape[1:])))


def describe(value) -> str:
    if isinstance(value, dims.SymDim):
        return "a symbolic size"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int):
        return "an int"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, tuple):
        return "a tuple"
    return "a tensor"


def fmt_value(value) -> str:
    if isinstance(value, dims.SymDim):
        return dims.to_language(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "(" + ", ".join(fmt_value(v) for v in value) + ")"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def fmt_shape(shape: tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_channels(shape: tuple, what: str) -> int:
    c = shape[1]
    if not isinstance(c, int):
        raise CnnError(f"{what}: the channel dim must be static, got '{c}'")
    return c


def init_weight(spec: WeightSpec, rng: np.random.Generator) -> np.ndarray:
    """Seeded initialization: PyTorch's defaults for conv/linear, non-trivial batch-norm statistics."""
    shape = spec.shape
    if spec.init == "uniform_fan_in":
        bound = 1.0 / math.sqrt(max(spec.fan_in, 1))
        return rng.uniform(-bound, bound, shape).astype(np.float32)
    if spec.init == "ones":
        return np.ones(shape, np.float32)
    if spec.init == "zeros":
        return np.zeros(shape, np.float32)
    if spec.init == "bn_weight":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if spec.init == "bn_bias":
        return rng.uniform(-0.5, 0.5, shape).astype(np.float32)
    if spec.init == "bn_mean":
        return rng.normal(0.0, 0.2, shape).astype(np.float32)
    if spec.init == "bn_var":
        return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    if spec.init == "prelu":
        return rng.uniform(0.1, 0.4, shape).astype(np.float32)
    raise ValueError(f"unknown initializer {spec.init}")


Checker = Callable[[Any], Any]
