"""Where ONNX Runtime's int8 falls short of a network, found before the user sees it.

Any network the compiler emits must quantize to a model that loads and runs, with the layers that
have no usable int8 kernel kept in float32, or fail with an error that names the layer. Three kinds
of gap, each found here rather than special-cased per op elsewhere:

  - known quantizer limits, seen in the float model (`known_unsupported`): a grouped ConvTranspose
    (the quantizer's per-channel weight scales do not broadcast against its bias);
  - kernels that refuse the quantized node when the session loads or runs it (`failing_node`): for
    example QLinearAveragePool takes no `dilations` attribute and no 3-D window; the node that ONNX
    Runtime names is kept in float32 and the model quantized again;
  - activations that are not finite on the calibration data (`nonfinite_activations`): int8 has no
    range for them, so the error names the layer.
"""

from __future__ import annotations

import re

import numpy as np
import onnx

from cnncomp.onnx_graph import attrs_of, consumers, producers

# ONNX Runtime names the node it failed on in these shapes of message
_NODE_IN_MESSAGE = (re.compile(r'In Node, \("([^"]+)"'), re.compile(r"Name:'([^']+)'"),
                    re.compile(r"Node \(([^)]+)\) Op \("))


def short_reason(message: str) -> str:
    """The part of an ONNX Runtime error that says what is wrong (not which tensors the node has)."""
    for marker in (", Error ", "Status Message: ", "[ShapeInferenceError] "):
        if marker in message:
            return message.rsplit(marker, 1)[1].strip().splitlines()[0][:160]
    return message.strip().splitlines()[0][:160]


def known_unsupported(model: onnx.ModelProto) -> dict[str, str]:
    """{node: why} for the float nodes ONNX Runtime's quantizer cannot quantize (it raises, naming none)."""
    out = {}
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "ConvTranspose" and attrs_of(node).get("group", 1) > 1:
            out[node.name] = "a grouped ConvTranspose (the quantizer's per-channel scales do not fit its bias)"
        if node.op_type == "LayerNormalization" and len(shapes.get(node.input[1], ())) > 1:
            out[node.name] = "a LayerNormalization over several axes (the quantizer takes a 1-D scale only)"
    return out


def failing_node(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[str | None, str] | None:
    """None when ONNX Runtime loads the model and runs it on `feeds`; else (the node it names or None, its
    message)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own exception types; any of them is the answer
        message = str(e)
        for pattern in _NODE_IN_MESSAGE:
            found = pattern.search(message)
            if found:
                return found.group(1), message
        return None, message
    return None


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the model that also outputs these tensors (to look inside it)."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(names)
                              if n not in present)
    return probe


def nonfinite_activations(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """(node, what) for every node output that is NaN or infinite on `feeds`, in graph order."""
    import onnxruntime as ort

    producer = {name: n.name for name, n in producers(model).items()}
    probe = with_outputs(model, list(producer))
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    found = []
    for name, value in zip(names, session.run(names, feeds)):
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            kinds = [k for k, bad in (("NaN", np.isnan(value).any()), ("+Inf", np.isposinf(value).any()),
                                      ("-Inf", np.isneginf(value).any())) if bad]
            found.append((producer.get(name, name), "/".join(kinds)))
    return found


def neighbourhood(model: onnx.ModelProto, node: str, hops: int = 1) -> set[str]:
    """The node and every node within `hops` tensor edges of it (producers and consumers)."""
    producer = {name: n.name for name, n in producers(model).items()}
    readers = {name: [n.name for n in nodes] for name, nodes in consumers(model).items()}
    by_name = {n.name: n for n in model.graph.node}
    found, frontier = {node}, {node}
    for _ in range(hops):
        step = set()
        for name in frontier:
            current = by_name[name]
            step |= {producer[i] for i in current.input if i in producer}
            step |= {c for o in current.output for c in readers.get(o, [])}
        frontier = step - found
        found |= step
    return found
