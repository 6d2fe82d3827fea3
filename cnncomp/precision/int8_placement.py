"""Where a runtime's int8 is slower than its float for a layer, so that int8 keeps the layer in float.

ONNX Runtime's CPU kernels decide the default placement (int8.py, int8_support.py). Another runtime reading
the same kind of QDQ file may have kernels that pay in int8 where ONNX Runtime's do not; each runtime names
its own rule here by `Runtime.int8_float_rule` (run/runtime.py), and the quantizer keeps the layers that rule
finds in float32 (the runtime then computes them at its own float precision).

Rules:

- `input-convs`: a Conv that reads a graph input with at most FEW_INPUT_CHANNELS channels (the RGB stem of
  almost every vision network). OpenVINO's CPU plugin on AMX computes int8 convolutions in tiles of 64 input
  channels, so a 3-channel int8 stem uses ~5% of each tile, needs a FakeQuantize and a layout reorder of the
  network's input in front of it, and ran MobileNetV2's stem slower than the same conv in bf16 (and no faster
  than in f32); the rest of the network stays int8 (docs/benchmarks.md, "MobileNetV2 int8 under OpenVINO").
"""

from __future__ import annotations

import onnx

FEW_INPUT_CHANNELS = 4


def input_convs(model: onnx.ModelProto, max_channels: int = FEW_INPUT_CHANNELS) -> dict[str, str]:
    """{node: why} for every Conv whose data input is a graph input with at most `max_channels` channels."""
    weights = {t.name: t for t in model.graph.initializer}
    graph_inputs = {v.name for v in model.graph.input if v.name not in weights}
    found = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[0] not in graph_inputs or len(node.input) < 2:
            continue
        weight = weights.get(node.input[1])
        if weight is None or len(weight.dims) < 2:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        channels = weight.dims[1] * group
        if channels <= max_channels:
            found[node.name] = (f"reads the network input '{node.input[0]}' with {channels} channel"
                                f"{'s' if channels != 1 else ''}")
    return found


RULES = {"input-convs": input_convs}


def float_layers(rule: str | None, model: onnx.ModelProto) -> dict[str, str]:
    """{node: why} that the named rule keeps in float32 (None: no rule, nothing)."""
    return RULES[rule](model) if rule else {}
