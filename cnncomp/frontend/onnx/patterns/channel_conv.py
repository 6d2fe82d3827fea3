"""ECA's conv over channels: a 1-D conv that slides along the channel axis of a pooled [N, C] vector.

    Reshape(Sigmoid(Conv1d(Reshape(ReduceMean(x, (2, 3)), [N, 1, C]))), [N, C, 1, 1])
        -> gap -> conv(C, 1, bias) with a banded [C, C] weight -> sigmoid

timm's EcaModule (and CecaModule) pools, views the [N, C] means as one sequence [N, 1, C], convolves it
with a kernel of k taps (k odd, 'same' padding, one in and out channel) and views the result back as
[N, C, 1, 1]. The language has no view between the two, but the conv along channels is a linear map of
the C means: output channel c reads input channel c + j - p with tap j, so it is a 1x1 conv over
channels whose [C, C] weight is banded (k nonzero diagonals, the rest zeros). Exact in real numbers; in
float32 only the order of the k nonzero products in each sum may change (the zeros add exactly). The
banded weight has C^2 entries instead of k: ECA's few parameters become a dense-looking conv.
"""

from __future__ import annotations

import numpy as np

from cnncomp.frontend.onnx.model import OnnxModel, attrs_of
from cnncomp.frontend.onnx.patterns.base import Match, single
from cnncomp.frontend.onnx.patterns.layout import reshape_target


def eca(m: OnnxModel, node) -> list[Match] | None:
    """The ECA chain ending at `node` (the Reshape back to [N, C, 1, 1]) as gap, conv and its gate; None if
    it is not one."""
    shape_in, shape_out = m.shapes.get(node.input[0]), m.shapes.get(node.output[0])
    if shape_in is None or shape_out is None or len(shape_in) != 3 or len(shape_out) != 4 \
            or shape_in[1] != 1 or not isinstance(shape_in[2], int) or tuple(shape_out[1:]) != (shape_in[2], 1, 1):
        return None
    channels = shape_in[2]
    gate = single(m, node.input[0], node, "Sigmoid")
    conv_out = gate.input[0] if gate is not None else node.input[0]
    conv = single(m, conv_out, gate if gate is not None else node, "Conv")
    if conv is None:
        return None
    weight, bias = m.const(conv.input[1]), m.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    a = attrs_of(conv)
    if weight is None or weight.shape[:2] != (1, 1) or weight.ndim != 3 or a.get("group", 1) != 1 \
            or any(s != 1 for s in a.get("strides", [1])):
        return None
    view = single(m, conv.input[0], conv, "Reshape")
    if view is None or reshape_target(m, view) is None:
        return None
    mean = single(m, view.input[0], view, "ReduceMean")
    pooled = m.shapes.get(view.input[0])
    if mean is None or pooled is None or tuple(pooled[1:]) != (channels,) or attrs_of(mean).get("keepdims", 1):
        return None
    x_shape = m.shapes.get(mean.input[0])
    axes = attrs_of(mean).get("axes")
    if axes is None and len(mean.input) > 1 and mean.input[1]:
        axes = (m.const(mean.input[1]) if m.const(mean.input[1]) is not None else np.array([])).tolist()
    if x_shape is None or len(x_shape) != 4 or sorted(int(v) % 4 for v in (axes or [])) != [2, 3]:
        return None
    taps = weight.reshape(-1)
    dilation = int(a.get("dilations", [1])[0])
    begin, end = (int(p) for p in a.get("pads", [0, 0]))
    if begin + end != (len(taps) - 1) * dilation:
        return None  # the output would not have C positions
    banded = np.zeros((channels, channels), np.float32)
    for c in range(channels):
        for j, tap in enumerate(taps):
            source = c + j * dilation - begin
            if 0 <= source < channels:
                banded[c, source] = tap
    pooled_name, conv_name = f"{node.output[0]}/eca_gap", f"{node.output[0]}/eca_conv"
    weights = {"weight": banded.reshape(channels, channels, 1, 1)}
    if bias is not None:
        weights["bias"] = np.full(channels, float(bias.reshape(-1)[0]), np.float32)
    parts = [Match("gap", {}, [mean.input[0]], pooled_name, [view, mean]),
             Match("conv", {"out": channels, "k": 1, "bias": bias is not None}, [pooled_name],
                   node.output[0] if gate is None else conv_name, [conv] if gate is not None else [node, conv],
                   weights)]
    if gate is not None:
        parts.append(Match("sigmoid", {}, [conv_name], node.output[0], [node, gate]))
    return parts
