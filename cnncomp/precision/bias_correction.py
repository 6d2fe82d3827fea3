"""Bias correction for int8 (Nagel et al. 2019, data-free quantization, section 4.2; empirical form).

Rounding a layer's weights to int8 shifts the mean of its outputs: with W_q the dequantized int8
weights, E[W_q x] - E[W x] = (W_q - W) E[x], which is not zero where the rounding errors of an
output channel's weights do not cancel (a 3x3 depthwise kernel has only 9 of them) and the inputs
have a non-zero mean (after a ReLU they always do). The correction subtracts that shift from the
bias: for each quantized Conv/Gemm, E[x] is the mean input of the layer *in the int8 model* on the
calibration samples (so the upstream layers' quantization is included), the shift per output
channel is the spatial mean of conv(W_q - W, E[x]) (exact for the mean, padding included: the conv
is linear), and the int32 bias of the QDQ model is rewritten to round((b - shift) / scale).

It is exact in expectation only, and measured, not assumed: on seeded ResNet-18/MobileNetV2 it
lowered the int8 error by 10-12%, on a trained MobileNetV2 it raised it. So `auto` (the default)
applies it only where it lowers the error on the calibration samples (against the float32 model;
the held-out samples stay for the reported error); `on` always, `off` never.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from cnncomp.onnx_graph import attrs_of
from cnncomp.precision.int8_support import with_outputs

MODES = ("auto", "on", "off")
DEFAULT_MODE = "auto"
CORRECTED_OPS = ("Conv", "Gemm")
MAX_SAMPLES = 32  # calibration samples for the input means and the auto choice (the means settle long before)


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _constant_dequantizers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """{DequantizeLinear output: node} for every DequantizeLinear of an initializer (weights, biases)."""
    inits = {t.name for t in model.graph.initializer}
    return {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}


def _dequantized_constants(model: onnx.ModelProto, names=None, values: bool = True
                           ) -> dict[str, tuple[onnx.NodeProto, np.ndarray | None, np.ndarray]]:
    """{DequantizeLinear output: (node, dequantized value, scale broadcast to it)} for every constant DQ, or for
    those of `names`; without `values`, the value is None (dequantizing all of a ResNet-50's weights in float64
    takes a tenth of a second or more, each time: only what is read)."""
    inits = _initializers(model)
    dequantizers = _constant_dequantizers(model)
    out = {}
    for name in (dequantizers if names is None else [n for n in dict.fromkeys(names) if n in dequantizers]):
        node = dequantizers[name]
        q = numpy_helper.to_array(inits[node.input[0]])
        q = q.astype(np.float64) if values else np.empty((0,) * q.ndim)  # without values: its rank only
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        zero = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
                if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
        if scale.ndim == 1 and q.ndim > 1:
            shape = [1] * q.ndim
            shape[attrs_of(node).get("axis", 1) % q.ndim] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        out[name] = (node, (q - zero) * scale if values else None, scale)
    return out


def quantized_layers(quantized: onnx.ModelProto, float_model: onnx.ModelProto):
    """(int8 node, float node) for every Conv/Gemm whose weights the int8 model dequantizes from int8."""
    constants = _constant_dequantizers(quantized)
    float_nodes = {n.name: n for n in float_model.graph.node}
    for node in quantized.graph.node:
        if node.op_type in CORRECTED_OPS and len(node.input) > 1 and node.input[1] in constants \
                and node.name in float_nodes and float_nodes[node.name].op_type == node.op_type:
            yield node, float_nodes[node.name]


def _mean_inputs(quantized: onnx.ModelProto, names: list[str], calibration: dict, batch: int) -> dict:
    """The mean over the calibration samples of each named tensor of the int8 model: per name, a list of
    (mean, sample count), one per size the tensor took (one entry unless the samples differ in size)."""
    from cnncomp.passes.budget import batches
    from cnncomp.run.session import Session

    session = Session(with_outputs(quantized, names), "cpu", quiet=True)
    sums: dict[str, dict[tuple, list]] = {}
    for feeds in batches(calibration, batch):
        count = len(next(iter(feeds.values())))
        for name, value in session.run(feeds, list(dict.fromkeys(names))).items():
            total = np.asarray(value).sum(axis=0, dtype=np.float64)
            by_size = sums.setdefault(name, {})
            if total.shape in by_size:
                by_size[total.shape][0] += total
                by_size[total.shape][1] += count
            else:
                by_size[total.shape] = [total, count]
    return {name: [(s / n, n) for s, n in by_size.values()] for name, by_size in sums.items()}


def _output_shift(node: onnx.NodeProto, weight_error: np.ndarray, mean_input: np.ndarray) -> np.ndarray | None:
    """Per output channel, the mean that the weight error adds to the node's output; None when not handled."""
    import torch

    attrs = attrs_of(node)
    if node.op_type == "Gemm":
        if attrs.get("transA", 0) or mean_input.ndim != 1:
            return None
        w = weight_error if attrs.get("transB", 0) else weight_error.T
        return attrs.get("alpha", 1.0) * (w @ mean_input)
    rank = weight_error.ndim - 2
    if attrs.get("auto_pad", "NOTSET") != "NOTSET" or rank not in (1, 2, 3) \
            or mean_input.ndim != rank + 1:
        return None
    pads = attrs.get("pads", [0] * 2 * rank)
    torch_pads = [p for axis in reversed(range(rank)) for p in (pads[axis], pads[axis + rank])]
    x = torch.nn.functional.pad(torch.from_numpy(mean_input)[None], torch_pads)
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[rank - 1]
    y = conv(x, torch.from_numpy(weight_error), stride=attrs.get("strides", [1] * rank),
             dilation=attrs.get("dilations", [1] * rank), groups=attrs.get("group", 1))
    return y.mean(dim=tuple(range(2, rank + 2)))[0].numpy()


def bias_corrections(float_model: onnx.ModelProto, quantized: onnx.ModelProto, calibration: dict,
                     batch: int = 1) -> dict[str, np.ndarray]:
    """{node name: the output shift its int8 weights cause, per output channel}, measured on `calibration`
    with the layers' inputs taken from the int8 model `quantized`."""
    float_inits = _initializers(float_model)
    layers = [(q, f) for q, f in quantized_layers(quantized, float_model) if f.input[1] in float_inits]
    if not layers:
        return {}
    constants = _dequantized_constants(quantized, [q.input[1] for q, _ in layers])
    calibration = {k: v[:max(batch, MAX_SAMPLES // batch * batch)] for k, v in calibration.items()}
    means = _mean_inputs(quantized, [q.input[0] for q, _ in layers], calibration, batch)
    shifts = {}
    for q, f in layers:
        weight = numpy_helper.to_array(float_inits[f.input[1]]).astype(np.float64)
        error = constants[q.input[1]][1] - weight
        # per size the samples came in, weighted by its samples (the shift is linear in the mean input)
        found = [(_output_shift(q, error, mean), n) for mean, n in means[q.input[0]]]
        shift = None if any(s is None for s, _ in found) else \
            sum(s * n for s, n in found) / sum(n for _, n in found)
        if shift is not None and np.all(np.isfinite(shift)):
            shifts[q.name] = shift
    return shifts


def apply_bias_corrections(quantized: onnx.ModelProto, shifts: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Subtract each node's shift from its bias in the int8 model (in place): an int32 bias is re-rounded at its
    scale, a float bias adjusted, and a node without a bias given an int32 one at scale x_scale * w_scale."""
    inits = _initializers(quantized)
    corrected = [n for n in quantized.graph.node if n.name in shifts and n.op_type in CORRECTED_OPS]
    constants = {**_dequantized_constants(quantized, [n.input[1] for n in corrected], values=False),
                 **_dequantized_constants(quantized, [n.input[2] for n in corrected if len(n.input) > 2])}
    activation_scales = _activation_scales(quantized)
    uses: dict[str, int] = {}
    for node in quantized.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in quantized.graph.node:
        shift = shifts.get(node.name)
        if shift is None or node.op_type not in CORRECTED_OPS or node.input[1] not in constants:
            continue
        bias_factor = 1.0 if node.op_type == "Conv" else attrs_of(node).get("beta", 1.0)  # Gemm: beta * C
        if bias_factor == 0:
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias in constants and uses.get(constants[bias][0].input[0]) == 1:
            dq, value, scale = constants[bias]
            tensor = inits[dq.input[0]]
            q = np.round((value.reshape(-1) - shift / bias_factor) / scale.reshape(-1))
            info = np.iinfo(numpy_helper.to_array(tensor).dtype)
            tensor.CopyFrom(numpy_helper.from_array(np.clip(q, info.min, info.max).astype(info.dtype), tensor.name))
        elif bias in inits and uses.get(bias) == 1:
            value = numpy_helper.to_array(inits[bias])
            inits[bias].CopyFrom(numpy_helper.from_array((value - shift / bias_factor).astype(value.dtype), bias))
        elif bias is None and node.input[0] in activation_scales:
            _add_int32_bias(quantized, node, -shift / bias_factor, activation_scales[node.input[0]],
                            constants[node.input[1]][2].reshape(-1))
    return quantized


def _activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """{DequantizeLinear output: its per-tensor scale} for the activations (non-constant DQ inputs)."""
    inits = _initializers(model)
    return {n.output[0]: float(numpy_helper.to_array(inits[n.input[1]]).reshape(-1)[0])
            for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] not in inits and n.input[1] in inits
            and numpy_helper.to_array(inits[n.input[1]]).size == 1}


def _add_int32_bias(model: onnx.ModelProto, node: onnx.NodeProto, bias: np.ndarray, x_scale: float,
                    w_scale: np.ndarray) -> None:
    """Give a bias-less Conv/Gemm an int32 bias (a DequantizeLinear at scale x_scale * w_scale, the layout ONNX
    Runtime fuses into QLinearConv/QGemm)."""
    scale = (x_scale * np.broadcast_to(w_scale, bias.shape)).astype(np.float32)
    q = np.clip(np.round(bias / scale), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    base = f"{node.name}_bias_correction"
    model.graph.initializer.extend([numpy_helper.from_array(q, base + "_quantized"),
                                    numpy_helper.from_array(scale, base + "_scale"),
                                    numpy_helper.from_array(np.zeros_like(q), base + "_zero_point")])
    dq = onnx.helper.make_node("DequantizeLinear", [base + "_quantized", base + "_scale", base + "_zero_point"],
                               [base], name=base + "_DequantizeLinear", axis=0)
    position = list(model.graph.node).index(node)
    model.graph.node.insert(position, dq)
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = base
