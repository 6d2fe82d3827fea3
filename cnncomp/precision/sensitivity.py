"""Each layer's int8 error alone, for the whole network in one run (int8.rank_layers, `--stats`).

A layer quantized alone (`Quantizer.quantize(only=[layer])`) differs from the float32 model only from that
layer on: its input is rounded through its QuantizeLinear/DequantizeLinear pair, its weights are int8 and its
output is rounded through its own pair; every layer before it is float32. So the layer's output in that model
is the full QDQ model's layer (the same nodes: ONNX Runtime's quantizer places a layer's pairs and int8 weights
the same way whatever else it quantizes) fed the float32 model's tensors. This module copies every layer's
quantized nodes out of the full QDQ model, beside the float32 model and reading its tensors, and runs that one
model once on the held-out samples: each layer's error alone is the relative L2 error of its output tensors
(what the next layers read) against the float32 model's, all layers in one run, instead of quantizing and
running the whole network once per layer (71 quantize_static calls and runs for ResNet-50: ~20 minutes,
loaded, before; docs/precision.md has the figures).

It is a layer's own error, not the network output's: the budget search orders layers by it (int8_speed
.fallback_order) and measures every candidate model on the network's outputs itself.
"""

from __future__ import annotations

import numpy as np
import onnx

from cnncomp.onnx_graph import consumers, producers

SUFFIX = "__alone"  # added to every copied node and tensor name (one copy per layer)


def _float_name(name: str, float_tensors: set[str]) -> str | None:
    """The float32 model's name of a tensor the quantizer reads: the same, or a graph output's that the
    quantizer renamed to `{output}_QuantizeLinear_Input`."""
    if name in float_tensors:
        return name
    stripped = name.removesuffix("_QuantizeLinear_Input")
    return stripped if stripped in float_tensors else None


def layer_copies(float_model: onnx.ModelProto, quantized: onnx.ModelProto, groups: dict[str, list[str]],
                 layers: list[str]) -> tuple[onnx.ModelProto, dict[str, list[tuple[str, str]]]]:
    """The float32 model with each layer's quantized nodes copied beside it, reading the float32 tensors:
    (model, {layer: [(copy's output, float32 tensor it is compared with)]}). A layer the quantized model
    leaves in float32 gets no copy (and no pairs: nothing of it is int8)."""
    node_of = {n.name: n for n in quantized.graph.node}
    made_by, read_by = producers(quantized), consumers(quantized)
    q_inits = {t.name: t for t in quantized.graph.initializer}
    float_tensors = ({o for n in float_model.graph.node for o in n.output} | {i.name for i in float_model.graph.input}
                     | {t.name for t in float_model.graph.initializer})
    graph_outputs = {o.name for o in quantized.graph.output}
    model = onnx.ModelProto.FromString(float_model.SerializeToString())
    added_inits: set[str] = set()
    compared: dict[str, list[tuple[str, str]]] = {}

    def constant(name: str) -> str:
        """A quantized-model initializer, added once under its own name (suffixed: it may differ from a float
        one of the same name)."""
        new = name + SUFFIX
        if new not in added_inits:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(q_inits[name])
            tensor.name = new
            model.graph.initializer.append(tensor)
            added_inits.add(new)
        return new

    for index, layer in enumerate(layers):
        members = [node_of[m] for m in groups[layer] if m in node_of]  # a Relu the quantizer folded is gone
        names = {n.name for n in members}
        tag = f"{SUFFIX}{index}"
        copies: list[onnx.NodeProto] = []
        renamed: dict[str, str] = {}
        ok = True

        def copy(node: onnx.NodeProto, inputs: list[str]) -> None:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new.name = node.name + tag
            del new.input[:]
            new.input.extend(inputs)
            for i, out in enumerate(node.output):
                renamed[out] = out + tag
                new.output[i] = out + tag
            copies.append(new)

        def source(name: str) -> str | None:
            """The copy's name for a tensor a member (or a pair before it) reads."""
            if not name:
                return name
            if name in renamed:
                return renamed[name]
            if name in q_inits:
                return constant(name)
            node = made_by.get(name)
            if node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear") and \
                    node.name not in names:
                inputs = [source(i) for i in node.input]
                if any(i is None for i in inputs):
                    return None
                copy(node, inputs)
                return renamed[name]
            return _float_name(name, float_tensors)  # a float32 tensor from before the layer

        for node in members:  # in graph order: a member reads the members before it
            inputs = [source(i) for i in node.input]
            if any(i is None for i in inputs):
                ok = False
                break
            copy(node, inputs)
        if not ok or not any(n.op_type == "DequantizeLinear" for n in copies):
            continue  # nothing int8 to measure (or a tensor not found): its error alone is 0
        pairs = []
        for node in members:
            for out in node.output:
                value, readers = out, read_by.get(out, [])
                # the pair after the layer's output: what the next layers read
                if len(readers) == 1 and readers[0].op_type == "QuantizeLinear" and readers[0].name not in names:
                    dq = read_by.get(readers[0].output[0], [])
                    if len(dq) == 1 and dq[0].op_type == "DequantizeLinear":
                        if dq[0].output[0] not in renamed:  # not yet copied as a later member's input
                            copy(readers[0], [renamed[out]] + [source(i) for i in readers[0].input[1:]])
                            copy(dq[0], [renamed[readers[0].output[0]]] + [source(i) for i in dq[0].input[1:]])
                        value, readers = dq[0].output[0], read_by.get(dq[0].output[0], [])
                outside = out in graph_outputs or value in graph_outputs or any(r.name not in names for r in readers)
                target = _float_name(out, float_tensors)
                if outside and target is not None:
                    pairs.append((renamed[value], target))
        if pairs:
            model.graph.node.extend(copies)
            compared[layer] = pairs
    names = [n for pairs in compared.values() for pair in pairs for n in pair]
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(names)
                              if n not in present)
    return model, compared


def errors_alone(float_model: onnx.ModelProto, quantized: onnx.ModelProto, groups: dict[str, list[str]],
                 layers: list[str], feeds: dict, batch: int | None = None) -> dict[str, float]:
    """{layer: relative L2 error of its output tensors with only it in int8} on `feeds` (run `batch` samples
    at a time; None: all at once, unless the samples differ in size), every layer in one run."""
    from cnncomp.inputs import is_mixed
    from cnncomp.passes.budget import batches
    from cnncomp.run.session import Session

    model, compared = layer_copies(float_model, quantized, groups, layers)
    wanted = list(dict.fromkeys(n for pairs in compared.values() for pair in pairs for n in pair))
    session = Session(model, "cpu", quiet=True)
    chunks = [feeds] if batch is None and not is_mixed(feeds) else list(batches(feeds, batch or 1))
    noise = {layer: 0.0 for layer in compared}
    signal = {layer: 0.0 for layer in compared}
    for chunk in chunks:
        values = session.run(chunk, wanted) if wanted else {}
        for layer, pairs in compared.items():
            for got, want in pairs:
                a, b = np.asarray(values[got], np.float64), np.asarray(values[want], np.float64)
                noise[layer] += float(np.sum((a - b) ** 2))
                signal[layer] += float(np.sum(b ** 2))
    errors = {}
    for layer in layers:
        if layer not in compared:
            errors[layer] = 0.0
        elif not np.isfinite(noise[layer]):
            errors[layer] = float("inf")
        else:
            errors[layer] = float(np.sqrt(noise[layer] / signal[layer])) if signal[layer] > 0 else \
                (0.0 if noise[layer] == 0 else float("inf"))
    return errors
