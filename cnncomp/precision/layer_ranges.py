"""Activation ranges for int8 chosen by the output error of the layers that read them (`--calibration-method layer`).

A tensor's own quantization error (`mse`, ranges.py) weighs every value alike, but what the network feels is
the error of the layers reading it: a conv sums its input over a window and its channels, so rounding noise,
independent from value to value, partly averages out while clipping error, all of one sign, adds up; and a
channel the conv barely weighs may be clipped for free. So for each quantized activation x, several candidate
ranges are tried and the one kept minimises

    error(range) = sum over the readers r of x of  (||e_r||^2 + BIAS_WEIGHT * sum_c n_c m_c^2) / ||r(x)||^2,
    e_r = r(q(x)) - r(x),   m_c = the mean of e_r over output channel c's n_c values (its mean shift)

where q is int8 fake quantization of x over the range (ONNX Runtime's own scale and zero point: uint8 with a
zero point, or int8 symmetric for TensorRT) and r(x) the reader's float32 output. A conv, gemm or matmul whose
weight is an initializer is evaluated with its int8 weights (per output channel, symmetric, as the quantizer
rounds them) on q(x): what the int8 model computes there. The mean shift a clipped range puts into a channel
counts BIAS_WEIGHT times more than noise of the same size: the layers after the reader sum it coherently,
where independent rounding noise partly averages out; without that term the choices were worse than every
single rule on two of three trained nets (docs/precision.md). Any other reader (an add, a concat, a graph
output) counts the tensor's own relative error ||q(x) - x||^2 / ||x||^2. Readers that pass the quantization
through (ONNX Runtime's QDQ quantizer gives a max pool's or a reshape's output its input's scale) are looked
through: their readers read x's quantization, so they are x's readers, evaluated on the pass-through output
(q commutes with a max pool, a reshape, a transpose; with an average pool it does nearly).

The candidates: the observed range (min-max), a 99.999% percentile range (0.0005% cut at each end, from the
histogram: ONNX Runtime's Percentile calibrator's non-symmetric rule; the default's calibrator is its symmetric one,
which cuts 0.001% of |x| and gives -t, t clamped to the observed range), `mse`'s, and CLIP_FRACTIONS of the observed
range. Entropy's KL threshold is not a candidate: it needs its own histogram of every tensor and a search per
tensor as long as the whole calibration of the other methods.

Cost: the histogram pass of `mse` over every calibration sample, then one more pass over the first
samples (LAYER_VALUES input values) in which each reader runs once in float32 and once per candidate (torch, every thread):
about as many conv MACs as running the network 1 + len(candidates) times on those samples.

Tensors whose range ONNX Runtime overrides are left as they are: the input of a Relu/Clip that is its only
reader (it gets the Relu's output range) and the output of a pass-through op whose input is quantized.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cnncomp.onnx_graph import attrs_of, consumers, producers
from cnncomp.precision.int8_support import int8_weight_scales
from cnncomp.precision.ranges import Histogram, mse_range, rewrite_cache, tensor_histograms

# the readers' errors are measured on the first calibration samples up to this many input values (four 224x224
# RGB images; all 192 samples of an 8x8 digit: on 4 of them the choice fitted those 4 and was worse than every rule)
LAYER_VALUES = 600_000
GROUP_VALUES = 150_000  # input values the readers run on at once (one 224x224 RGB image; 2,300 8x8 digits)
CLIP_FRACTIONS = (0.5, 0.7, 0.85)  # of the observed range, tried beside the rules' ranges
SAME_RANGE = 0.01  # candidates closer than this share of the observed range are tried once
PERCENTILE = 99.999  # ONNX Runtime's Percentile calibrator's
WEIGHTED = ("Conv", "Gemm", "MatMul")
# a mean shift of an output channel counts this many times its squared size: it passes through the layers after
# the reader coherently, where independent rounding noise partly averages out. Fitted on the trained nets of
# docs/precision.md (the same nets its table reports: not an independent check): about 0, 2, 20, 170 and 200
# tried; 0 and 2 chose alike and worse than every single rule on PP-OCRv4's text detector, 170-200 did best
BIAS_WEIGHT = 200.0
OVERRIDDEN_BY_OUTPUT = ("Relu", "Clip")  # ONNX Runtime gives a lone reader's input its output's range


@dataclass
class Reader:
    """One reader of a tensor's quantization: `node` (a weighted layer, or None: the tensor's own error) reading
    `tensor` (the quantized tensor itself or a pass-through op's output that shares its quantization)."""

    tensor: str
    node: onnx.NodeProto | None = None


@dataclass
class Choice:
    """A tensor's candidate ranges and what its readers' outputs measured under each: the squared errors, the
    errors summed per output channel (their mean shifts), and the float outputs' squared norms."""

    candidates: list[tuple[float, float]]
    readers: list[Reader]
    errors: np.ndarray = field(default=None)  # [reader, candidate]: sum of squared output errors
    norms: np.ndarray = field(default=None)  # [reader]: sum of squared float outputs
    shifts: list = field(default=None)  # per reader: [candidate, output channel] summed errors (None: not read)
    counts: np.ndarray = field(default=None)  # [reader]: values per output channel

    def __post_init__(self):
        self.errors = np.zeros((len(self.readers), len(self.candidates)))
        self.norms = np.zeros(len(self.readers))
        self.shifts = [None] * len(self.readers)
        self.counts = np.zeros(len(self.readers))

    def add(self, i: int, reference, outputs) -> None:
        """Add reader i's float output and its output under each candidate (torch tensors, one batch; an
        iterable, so that one candidate's output is held at a time)."""
        self.norms[i] += squared(reference)
        channels = reference.shape[1] if reference.ndim >= 2 else 1
        self.counts[i] += reference.numel() / channels
        if self.shifts[i] is None:
            self.shifts[i] = np.zeros((len(self.candidates), channels))
        for j, out in enumerate(outputs):
            error = out.sub_(reference)
            self.errors[i, j] += squared(error)
            self.shifts[i][j] += channel_sums(error)

    def best(self) -> tuple[float, float]:
        """The candidate with the lowest error summed over readers, each relative to its float output's norm
        (a reader with a zero output counts nothing), its mean shifts weighted BIAS_WEIGHT times more."""
        error = self.errors.copy()
        for i, shifts in enumerate(self.shifts):
            if shifts is not None:  # sum over channels of count * mean^2: the mean shifts' part of the error
                error[i] += BIAS_WEIGHT * (shifts ** 2).sum(1) / max(self.counts[i], 1)
        relative = error / np.where(self.norms > 0, self.norms, np.inf)[:, None]
        return self.candidates[int(np.argmin(relative.sum(0)))]


def channel_sums(values) -> np.ndarray:
    """A torch tensor [N, C, ...] summed per channel C (a tensor of rank below 2: one channel)."""
    if values.ndim < 2:
        return np.array([float(values.sum())])
    return values.sum(dim=[d for d in range(values.ndim) if d != 1]).double().numpy()  # no transposed copy


@functools.cache
def pass_through_ops() -> frozenset[str]:
    """The ops ONNX Runtime's QDQ quantizer gives their input's quantization (max pool, reshape, ...); read from its
    registry once (readers_of asks for every tensor)."""
    from onnxruntime.quantization.operators.direct_q8 import QDQDirect8BitOp
    from onnxruntime.quantization.registry import QDQRegistry

    return frozenset(op for op, kind in QDQRegistry.items() if issubclass(kind, QDQDirect8BitOp))


def overridden(model: onnx.ModelProto, names: set[str]) -> set[str]:
    """The cached tensors whose range ONNX Runtime replaces by another's (see the module docstring)."""
    readers, made_by, through = consumers(model), producers(model), pass_through_ops()
    out = set()
    for name in names:
        users = readers.get(name, [])
        if len(users) == 1 and users[0].op_type in OVERRIDDEN_BY_OUTPUT and users[0].output[0] in names:
            out.add(name)
        producer = made_by.get(name)
        if producer is not None and producer.op_type in through and producer.input[0] in names:
            out.add(name)
    return out


def readers_of(name: str, readers: dict[str, list[onnx.NodeProto]], outputs: set[str],
               weights: dict[str, np.ndarray]) -> list[Reader]:
    """The readers whose error judges `name`'s range, looking through pass-through ops (`readers`: the
    graph's consumers(), `outputs`: its output names)."""
    through = pass_through_ops()
    found, frontier, own = [], [name], set()
    while frontier:
        tensor = frontier.pop()
        for user in readers.get(tensor, []):
            if user.op_type in through and user.input[0] == tensor:
                frontier.append(user.output[0])
            elif weighted_input(user, weights) == tensor:
                found.append(Reader(tensor, user))
            else:
                own.add(tensor)
        if tensor in outputs or not readers.get(tensor):
            own.add(tensor)
    return found + [Reader(t) for t in sorted(own)]


def weighted_input(node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> str | None:
    """The activation input of a conv/gemm/matmul whose weight is an initializer that runs here (None else)."""
    if node.op_type not in WEIGHTED or len(node.input) < 2 or node.input[1] not in weights:
        return None
    attrs = attrs_of(node)
    if node.op_type == "Conv" and (attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")
                                   or weights[node.input[1]].ndim not in (3, 4, 5)):
        return None  # SAME padding is not reproduced here: its tensor's own error judges it instead
    if node.op_type == "Gemm" and attrs.get("transA", 0):
        return None
    if node.op_type == "MatMul" and weights[node.input[1]].ndim != 2:
        return None
    return node.input[0]


def int8_weight(weight: np.ndarray, transposed: bool = False) -> np.ndarray:
    """The weight as the quantizer rounds it: per output channel, symmetric int8 (-127..127), dequantized, in
    ONNX Runtime's arithmetic (its scales, int8_support.int8_weight_scales; w / scale rounded in float32). The
    output channel is axis 0 (conv, gemm with transB) or the last (matmul, gemm without transB)."""
    axis = weight.ndim - 1 if transposed else 0
    shape = [1] * weight.ndim
    shape[axis] = -1
    scale = int8_weight_scales(weight, axis).reshape(shape)
    return (np.clip(np.round(weight.astype(np.float32) / scale), -127, 127) * scale).astype(np.float32)


def run_reader(node: onnx.NodeProto, x, weight, bias):
    """The reader's output on `x` (torch tensors) with this weight (conv: strides, pads, dilations, groups)."""
    import torch
    import torch.nn.functional as F

    attrs = attrs_of(node)
    if node.op_type == "MatMul":
        return torch.matmul(x, weight)
    if node.op_type == "Gemm":
        y = attrs.get("alpha", 1.0) * (x @ (weight.T if attrs.get("transB", 0) else weight))
        return y + attrs.get("beta", 1.0) * bias if bias is not None else y
    dims = weight.ndim - 2
    pads = list(attrs.get("pads", [0] * 2 * dims))
    if pads[:dims] != pads[dims:]:  # asymmetric: torch's F.pad takes the last dim first
        x = F.pad(x, [p for d in reversed(range(dims)) for p in (pads[d], pads[d + dims])])
        pads = [0] * 2 * dims
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    return conv(x, weight, bias, stride=attrs.get("strides", [1] * dims), padding=pads[:dims],
                dilation=attrs.get("dilations", [1] * dims), groups=attrs.get("group", 1))


def candidate_ranges(histogram: Histogram, symmetric: bool) -> list[tuple[float, float]]:
    """The ranges tried for one tensor: min-max, a percentile range, mse's, clipped fractions."""
    lo, hi = min(histogram.low, 0.0), max(histogram.high, 0.0)
    ranges = [(lo, hi), percentile_range(histogram), mse_range(histogram, symmetric)]
    ranges += [(f * lo, f * hi) for f in CLIP_FRACTIONS]
    kept: list[tuple[float, float]] = []
    for a, b in ranges:  # one of ranges that differ by under SAME_RANGE of the observed one (one run of the reader)
        if b > a and all(abs(a - c) + abs(b - d) > SAME_RANGE * (hi - lo) for c, d in kept):
            kept.append((float(a), float(b)))
    return kept


def percentile_range(histogram: Histogram, percentile: float = PERCENTILE) -> tuple[float, float]:
    """ONNX Runtime's Percentile calibrator's range by its non-symmetric rule ((100 - p) / 200 of the values cut
    at each end), from the histogram; zeros are in their bin already."""
    counts = histogram.counts.astype(np.float64)
    edges = np.linspace(histogram.low, histogram.high, len(counts) + 1)
    cdf = np.cumsum(counts / counts.sum())
    cut = (100.0 - percentile) / 200.0
    lo = edges[min(int(np.searchsorted(cdf, cut)), len(counts))]
    hi = edges[min(int(np.searchsorted(cdf, 1.0 - cut)), len(counts))]
    return min(max(float(lo), histogram.low), 0.0), max(min(float(hi), histogram.high), 0.0)


def fake_quantizer(symmetric: bool):
    """(values, lo, hi) -> values rounded through int8 over [lo, hi] with ONNX Runtime's scale and zero point
    (compute_scale_zp: zero inside the range, a level), in place on one copy: three times faster than torch's
    fake_quantize_per_tensor_affine on two threads (a value on a rounding tie may land one level off)."""
    import torch
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    kind = onnx.TensorProto.INT8 if symmetric else onnx.TensorProto.UINT8
    qmin, qmax = get_qmin_qmax_for_qType(kind, symmetric=symmetric)  # the scale's levels (int8: -127..127)
    low, high = (float(v) for v in get_qmin_qmax_for_qType(kind))  # QuantizeLinear saturates to the type's

    def quantize(values, lo: float, hi: float):
        zero, scale = compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32), qmin, qmax, symmetric)
        scale, zero = float(scale), float(zero)
        out = torch.mul(values, 1.0 / scale).round_().add_(zero).clamp_(low, high)
        return out.sub_(zero).mul_(scale)

    return quantize


def layer_ranges(model: onnx.ModelProto, extremes: dict[str, tuple[float, float]], calibration: dict,
                 batch: int = 1, symmetric: bool = False, taps=None) -> dict[str, tuple[float, float]]:
    """For each tensor of `extremes` (its observed [min, max]) whose range ONNX Runtime uses, the candidate
    range with the lowest summed relative output error of its readers on the calibration samples (`taps`: the
    model's float_taps.FloatTaps)."""
    import torch

    from cnncomp.precision.float_taps import FloatTaps

    taps = taps or FloatTaps(model)
    histograms = tensor_histograms(model, extremes, calibration, batch, taps=taps)
    chosen_for = [n for n in extremes if n not in overridden(model, set(extremes))]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    readers, outputs = consumers(model), {o.name for o in model.graph.output}
    candidates = {name: candidate_ranges(histograms[name], symmetric) for name in chosen_for}
    # a tensor that is zero on every sample has no range to choose (the quantizer's own rule stays)
    choices = {name: Choice(candidates[name], readers_of(name, readers, outputs, weights))
               for name in chosen_for if candidates[name]}
    # the readers' weights, float32 and int8-rounded, once
    layers = {}
    for choice in choices.values():
        for reader in choice.readers:
            node = reader.node
            if node is not None and node.name not in layers:
                attrs = attrs_of(node)
                weight = weights[node.input[1]]
                transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not attrs.get("transB", 0))
                bias = weights.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                layers[node.name] = (torch.from_numpy(weight.astype(np.float32)),
                                     torch.from_numpy(int8_weight(weight, transposed)),
                                     None if bias is None else torch.from_numpy(bias.astype(np.float32)))
    inputs = {i.name for i in model.graph.input}
    wanted = list(dict.fromkeys(r.tensor for c in choices.values() for r in c.readers) | dict.fromkeys(choices))
    quantize = fake_quantizer(symmetric)
    with torch.no_grad():
        for values in grouped_outputs(taps, calibration, batch, inputs, wanted):
            values = {n: torch.from_numpy(np.require(v, np.float32, "CW")) for n, v in values.items()}
            for choice in choices.values():
                add_errors(choice, values, layers, quantize)
    return {name: choice.best() for name, choice in choices.items()}


def grouped_outputs(taps, calibration: dict, batch: int, inputs: set[str], wanted: list[str]):
    """{tensor: values} of the first calibration samples (LAYER_VALUES input values), run `batch` at a time and
    yielded GROUP_VALUES input values at a time, samples of one size concatenated: the readers then run on
    groups, not on each 8x8 digit alone (one per run cost the digits CNN 40 s in Python overhead)."""
    from cnncomp.passes.budget import batches

    produced = [n for n in wanted if n not in inputs]
    group, size, seen = [], 0, 0
    for feeds in batches(calibration, batch):
        if seen >= LAYER_VALUES:
            break
        count = sum(np.size(v) for v in feeds.values())
        seen += count
        values = taps.run(feeds, produced) if produced else {}
        values = {n: feeds[n] if n in inputs else values[n] for n in wanted if n in inputs or n in values}
        if group and (size >= GROUP_VALUES or any(np.ndim(v) == 0 or np.shape(v)[1:] != np.shape(group[0][n])[1:]
                                                  for n, v in values.items())):
            yield joined(group)
            group, size = [], 0
        group.append(values)
        size += count
    if group:
        yield joined(group)


def joined(group: list[dict]) -> dict:
    """One {tensor: values} of several, concatenated along the sample dim."""
    if len(group) == 1:
        return group[0]
    return {n: np.concatenate([g[n] for g in group]) for n in group[0]}


def add_errors(choice: Choice, values: dict, layers: dict, quantize) -> None:
    """Add one batch's output errors of every reader under every candidate range to `choice`."""
    for i, reader in enumerate(choice.readers):
        x = values.get(reader.tensor)
        if x is None:
            continue
        if reader.node is None:
            choice.add(i, x, (quantize(x, lo, hi) for lo, hi in choice.candidates))
            continue
        weight, rounded, bias = layers[reader.node.name]
        choice.add(i, run_reader(reader.node, x, weight, bias),
                   (run_reader(reader.node, quantize(x, lo, hi), rounded, bias) for lo, hi in choice.candidates))


def squared(values) -> float:
    """The sum of squares of a torch tensor (its L2 norm squared: torch's fastest reduction for it here)."""
    import torch

    return float(torch.linalg.vector_norm(values)) ** 2


def write_layer_ranges(cache: Path, model: onnx.ModelProto, calibration: dict, batch: int = 1,
                       symmetric: bool = False, taps=None) -> dict[str, tuple[float, float]]:
    """Replace the ranges of the min-max calibration cache at `cache` by those its tensors' readers make the least
    output error with; returns them."""
    return rewrite_cache(cache, lambda extremes: layer_ranges(model, extremes, calibration, batch, symmetric, taps))
