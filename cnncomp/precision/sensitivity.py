"""Each layer's int8 error alone, without quantizing the network once per layer (int8.rank_layers, `--stats`).

A layer's "error alone" is the network's output error with only that layer in int8. It used to be measured
by quantizing the float32 model once per layer (`quantize_static` with only that layer's nodes) and running
the whole result: for ResNet-50's 71 layers, 71 quantizations and 71 runs of the network (108 s of a 341 s
int8 run, loaded). Here the full QDQ model is quantized once and each layer's model is derived from it:

- the layer's nodes are copied out of the full QDQ model (its int8 weights, bias, and the
  QuantizeLinear/DequantizeLinear pairs on its input and output tensors), reading the float32 model's
  tensors; every reader of the layer's input or output then reads the rounded tensor, as in the model
  quantized with only that layer (the quantizer places a layer's pairs and int8 weights the same way
  whatever else it quantizes; a pass-through op's output keeps the scale of its input, as in the full model);
- only what the layer changes is run: the nodes downstream of it, fed the float32 model's tensors at the
  boundary, which one run of the float32 model gives for every layer. A layer near the output costs a few
  nodes, one near the input most of the network;
- the downstream parts of consecutive layers are run side by side in one model (renamed apart, sharing
  weights and boundary tensors; up to COMBINED_NODES nodes): one ONNX Runtime session for several layers
  instead of one each. Creating a session cost ResNet-50's search 80 ms a layer, half of its 12 s; in
  models of 8-32 layers it costs 25-30 ms a layer, and the runs are no slower (the same outputs, to the bit).

The outputs are judged as before (`ModelErrorMeter.error`, the held-out samples against the float64
reference), so the ranking is that of the old measurement (tests/test_int8_sensitivity.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from cnncomp.onnx_graph import consumers, producers
from cnncomp.precision.float_taps import FloatTaps, shareable, shared_placeholder

SUFFIX = "__alone"  # added to the copied nodes and tensors


@dataclass
class LayerCopy:
    """A layer's quantized nodes copied out of the full QDQ model, reading float32 tensors."""

    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    rounded_inputs: dict[str, str]  # float32 tensor -> the copy's rounded version of it (what its readers read)
    outputs: dict[str, str]  # float32 tensor the layer makes -> the copy's tensor for it (what the next layers read)


def _float_name(name: str, float_tensors: set[str]) -> str | None:
    """The float32 model's name of a tensor the quantizer reads: the same, or a graph output's that the
    quantizer renamed to `{output}_QuantizeLinear_Input`."""
    if name in float_tensors:
        return name
    stripped = name.removesuffix("_QuantizeLinear_Input")
    return stripped if stripped in float_tensors else None


@dataclass
class ModelIndex:
    """What layer_copy looks up in the full QDQ model and the float32 model, built once for all layers."""

    node_of: dict[str, onnx.NodeProto]
    made_by: dict[str, onnx.NodeProto]
    read_by: dict[str, list[onnx.NodeProto]]
    q_inits: dict[str, onnx.TensorProto]
    float_tensors: set[str]
    graph_outputs: set[str]

    @classmethod
    def of(cls, float_model: onnx.ModelProto, quantized: onnx.ModelProto) -> "ModelIndex":
        float_tensors = ({o for n in float_model.graph.node for o in n.output}
                         | {i.name for i in float_model.graph.input} | {t.name for t in float_model.graph.initializer})
        return cls({n.name: n for n in quantized.graph.node}, producers(quantized), consumers(quantized),
                   {t.name: t for t in quantized.graph.initializer}, float_tensors,
                   {o.name for o in quantized.graph.output})


def layer_copy(float_model: onnx.ModelProto, quantized: onnx.ModelProto, members: list[str],
               index: ModelIndex | None = None) -> LayerCopy | None:
    """The layer of nodes `members` as `quantized` has it, reading `float_model`'s tensors; None when nothing of it
    is int8 there or a tensor it reads has no float32 counterpart. `index`: ModelIndex.of(float_model, quantized),
    when several layers are copied."""
    index = index or ModelIndex.of(float_model, quantized)
    node_of, made_by, read_by, q_inits = index.node_of, index.made_by, index.read_by, index.q_inits
    float_tensors, graph_outputs = index.float_tensors, index.graph_outputs
    nodes = [node_of[m] for m in members if m in node_of]  # a Relu the quantizer folded into the pair is gone
    names = {n.name for n in nodes}
    out = LayerCopy([], [], {}, {})
    renamed: dict[str, str] = {}
    added: set[str] = set()

    def copy(node: onnx.NodeProto, inputs: list[str]) -> None:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = node.name + SUFFIX
        del new.input[:]
        new.input.extend(inputs)
        for i, name in enumerate(node.output):
            renamed[name] = new.output[i] = name + SUFFIX
        out.nodes.append(new)

    def source(name: str) -> str | None:
        """The copy's name for a tensor a member (or a pair before it) reads."""
        if not name or name in renamed:
            return renamed.get(name, name)
        if name in q_inits:  # int8 weights, scales, zero points: under their own names (a float one may share it)
            if name + SUFFIX not in added:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(q_inits[name])
                tensor.name = name + SUFFIX
                out.initializers.append(tensor)
                added.add(tensor.name)
            return name + SUFFIX
        node = made_by.get(name)
        if node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear") and node.name not in names:
            inputs = [source(i) for i in node.input]
            if any(i is None for i in inputs):
                return None
            copy(node, inputs)
            if node.op_type == "QuantizeLinear" and _float_name(node.input[0], float_tensors) == inputs[0]:
                out.rounded_inputs[inputs[0]] = node.output[0]  # the DequantizeLinear after it is named below
            return renamed[name]
        return _float_name(name, float_tensors)  # a float32 tensor from before the layer

    for node in nodes:  # in graph order: a member reads the members before it
        inputs = [source(i) for i in node.input]
        if any(i is None for i in inputs):
            return None
        copy(node, inputs)
    # an input pair's QuantizeLinear output -> its DequantizeLinear's copy: what every reader of the input reads
    for tensor, q_output in list(out.rounded_inputs.items()):
        dq = [r for r in read_by.get(q_output, []) if r.op_type == "DequantizeLinear"]
        if dq and dq[0].output[0] in renamed:
            out.rounded_inputs[tensor] = renamed[dq[0].output[0]]
        else:
            del out.rounded_inputs[tensor]
    if not any(n.op_type == "DequantizeLinear" for n in out.nodes):
        return None  # nothing of it is int8 in the quantized model
    for node in nodes:
        for name in node.output:
            value, readers = name, read_by.get(name, [])
            # the pair after the layer's output: what the next layers read
            if len(readers) == 1 and readers[0].op_type == "QuantizeLinear" and readers[0].name not in names:
                dq = read_by.get(readers[0].output[0], [])
                if len(dq) == 1 and dq[0].op_type == "DequantizeLinear":
                    if dq[0].output[0] not in renamed:  # not yet copied as a later member's input
                        copy(readers[0], [renamed[name]] + [source(i) for i in readers[0].input[1:]])
                        copy(dq[0], [renamed[readers[0].output[0]]] + [source(i) for i in dq[0].input[1:]])
                    value, readers = dq[0].output[0], read_by.get(dq[0].output[0], [])
            outside = name in graph_outputs or value in graph_outputs or any(r.name not in names for r in readers)
            target = _float_name(name, float_tensors)
            if outside and target is not None:
                out.outputs[target] = renamed[value]
    return out


def downstream_model(float_model: onnx.ModelProto, copy: LayerCopy, members: list[str],
                     dtypes: dict[str, np.dtype]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The part of `float_model` that a layer in int8 changes, with the layer replaced by its copy: its inputs are
    the float32 tensors it reads at the boundary (of `dtypes`, by name); returns (model, {graph output: its tensor
    in the model}) for the graph outputs it changes."""
    rename = {**copy.rounded_inputs, **copy.outputs}
    changed = set(rename.values())
    members = set(members)
    nodes = list(copy.nodes)
    for node in float_model.graph.node:
        if node.name in members:
            continue
        if not any(name in rename or name in changed for name in node.input):
            continue
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, name in enumerate(new.input):
            new.input[i] = rename.get(name, name)
        nodes.append(new)
        changed.update(new.output)
    made = {o for n in nodes for o in n.output}
    float_inits = {t.name: t for t in float_model.graph.initializer}
    copied = {t.name for t in copy.initializers}
    read = list(dict.fromkeys(i for n in nodes for i in n.input if i and i not in made))
    inits = [shared_placeholder(float_inits[name]) if shareable(float_inits[name]) else float_inits[name]
             for name in read if name in float_inits and name not in copied]
    boundary = [name for name in read if name not in float_inits and name not in copied]
    outputs = {}
    for output in float_model.graph.output:
        name = copy.outputs.get(output.name, output.name)
        if name in made:
            outputs[output.name] = name
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(dtypes[n]), None)
              for n in boundary]
    graph = onnx.helper.make_graph(nodes, "alone", inputs,
                                   [onnx.helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(outputs.values())],
                                   initializer=inits + list(copy.initializers))
    model = onnx.helper.make_model(graph, opset_imports=float_model.opset_import, ir_version=float_model.ir_version)
    return model, outputs


COMBINED_NODES = 1000  # nodes of downstream parts run in one session (ResNet-50: 9 sessions for its 71 layers)


def side_by_side(parts: list[tuple[onnx.ModelProto, dict[str, str]]]) -> tuple[onnx.ModelProto, list[dict[str, str]]]:
    """One model running `parts` (downstream_model's (model, {graph output: its tensor})) side by side: each part's
    nodes and the tensors they make renamed apart (`__t{k}`), its boundary inputs and initializers shared by name
    (every part's are the float32 model's tensors or copies of the same QDQ model's). Returns the model and, per
    part, {graph output: its tensor in the model}."""
    nodes, inputs, initializers, outputs, changed = [], {}, {}, {}, []
    for k, (model, part_outputs) in enumerate(parts):
        made = {o for n in model.graph.node for o in n.output if o}

        def renamed(name: str) -> str:
            return f"{name}__t{k}" if name in made else name

        for node in model.graph.node:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new.name = f"{node.name}__t{k}"
            for i, name in enumerate(new.input):
                new.input[i] = renamed(name)
            for i, name in enumerate(new.output):
                new.output[i] = renamed(name)
            nodes.append(new)
        for value in model.graph.input:
            inputs.setdefault(value.name, value)
        for tensor in model.graph.initializer:
            initializers.setdefault(tensor.name, tensor)
        changed.append({output: renamed(name) for output, name in part_outputs.items()})
        for name in changed[-1].values():
            outputs.setdefault(name, onnx.helper.make_empty_tensor_value_info(name))
    graph = onnx.helper.make_graph(nodes, "alone", list(inputs.values()), list(outputs.values()),
                                   initializer=list(initializers.values()))
    first = parts[0][0]
    return onnx.helper.make_model(graph, opset_imports=first.opset_import, ir_version=first.ir_version), changed


def chunks_of_layers(float_model: onnx.ModelProto, groups: dict[str, list[str]], layers: list[str],
                     limit: int | None = None) -> list[list[int]]:
    """`layers` (indices) in runs of consecutive ones whose downstream parts have about `limit` nodes in all (at
    least one layer each; default COMBINED_NODES), a part's size taken as the nodes after the layer's first node in
    graph order."""
    limit = limit or COMBINED_NODES
    position = {n.name: i for i, n in enumerate(float_model.graph.node)}
    total = len(float_model.graph.node)
    chunks: list[list[int]] = []
    size = 0
    for index, layer in enumerate(layers):
        first = min((position[m] for m in groups[layer] if m in position), default=total)
        nodes = total - first
        if not chunks or size + nodes > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(index)
        size += nodes
    return chunks


def errors_alone(float_model: onnx.ModelProto, quantized: onnx.ModelProto, groups: dict[str, list[str]],
                 layers: list[str], probe, jobs: int = 1, taps: FloatTaps | None = None) -> dict[str, float]:
    """{layer: `probe`'s error (ModelErrorMeter: relative L2 of the outputs on its held-out samples) of the model
    with only that layer in int8 as `quantized` quantizes it}, each from the float32 run's tensors and a run of
    what the layer changes, consecutive layers' parts run side by side (`chunks_of_layers`, `side_by_side`; the
    chunks in `jobs` forked processes, with a progress bar). `taps`: the float32 model's (float_taps.py)."""
    from cnncomp.inputs import collate, is_mixed
    from cnncomp.passes.budget import batches
    from cnncomp.run.parallel import forked_map
    from cnncomp.run.session import Session

    feeds = probe.feeds
    chunks = [feeds] if probe.batch is None and not is_mixed(feeds) else list(batches(feeds, probe.batch or 1))
    taps = taps or FloatTaps(float_model)
    float_values = [{**chunk, **taps.run(chunk)} for chunk in chunks]
    dtypes = {name: np.asarray(value).dtype for name, value in float_values[0].items()}
    outputs = [o.name for o in float_model.graph.output]
    float_error = probe.error(None, {name: collate([v[name] for v in float_values]) for name in outputs})
    weights = taps.weights()  # the arrays stay alive with their OrtValues until the last session
    index = ModelIndex.of(float_model, quantized)
    layer_chunks = chunks_of_layers(float_model, groups, layers)

    def errors_of(chunk_index: int) -> list[float]:
        chunk = layer_chunks[chunk_index]
        errors, parts, measured = {}, [], []
        for i in chunk:
            copy = layer_copy(float_model, quantized, groups[layers[i]], index)
            if copy is None:
                errors[i] = float_error  # nothing of it is int8: the float32 model's error
                continue
            parts.append(downstream_model(float_model, copy, groups[layers[i]], dtypes))
            measured.append(i)
        if parts:
            model, changed = side_by_side(parts)
            boundary = [i.name for i in model.graph.input]
            shared = {i.name: weights[i.name] for i in model.graph.initializer
                      if i.data_location == onnx.TensorProto.EXTERNAL}
            session = Session(model, "cpu", quiet=True, shared=shared)
            wanted = [o.name for o in model.graph.output]
            runs = [session.run({name: values[name] for name in boundary}, wanted) for values in float_values]
            for i, part in zip(measured, changed):
                results = [{name: run[part[name]] if name in part else values[name] for name in outputs}
                           for run, values in zip(runs, float_values)]
                errors[i] = probe.error(None, {name: collate([r[name] for r in results]) for name in outputs})
        return [errors[i] for i in chunk]

    results = forked_map(errors_of, len(layer_chunks), jobs, label="int8 sensitivity")
    return dict(zip(layers, (error for chunk in results for error in chunk)))
