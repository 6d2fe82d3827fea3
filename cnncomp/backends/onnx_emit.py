"""ONNX emission: a LayerGraph and its weights to an onnx.ModelProto.

Each layer lowers itself through its op's `to_onnx` (see `onnx_builder`).
The model uses only standard ai.onnx ops:

- Opset: 17 by default, or the one asked for (13 at the lowest). A lowering
  that needs a newer opset says so with `b.require_opset` (DeformConv needs
  19); the model's opset is then raised to the highest such need, and a
  notice saying why is appended to the `notices` list the caller passes.
  Every node is then checked to exist at the final opset.
- IR version: the lowest that the ONNX release which introduced the opset
  wrote (opset 17 -> IR 8, opset 19 -> IR 9). ONNX Runtime 1.31 refuses the
  IR 14 that onnx 1.23 writes by default.
- Names: a layer's node and its output tensor are named after the layer;
  weights are initializers named `LAYER.weight` etc., in the layer's dtype;
  graph inputs keep their spec names and symbolic dims (`N`) become
  `dim_param`s; graph outputs take the spec's output names, through an
  Identity node where the producing layer is named otherwise.
- Each node's doc_string is its layer's spec location `file:line:col`.
- metadata_props: producer (cnncomp and its version), network, spec_hash
  and passes (a JSON list), where known.

The same graph and weights always give the same bytes. `save_onnx` writes
atomically and moves the weights to an external data file when they would
not fit a 2 GB protobuf.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from cnncomp.backends.onnx_builder import ONNX_DTYPES, OnnxBuilder, np_dtype
from cnncomp.backends.weights import atomic_write, check_weights
from cnncomp.errors import CnnError
from cnncomp.ops.registry import all_ops

DEFAULT_OPSET = 17
MIN_OPSET = 13  # Softmax over one axis, Clip with min/max inputs, optional Resize roi
EXTERNAL_DATA_LIMIT = 2**31 - 2**26  # bytes of weights above which save_onnx uses external data


def max_opset() -> int:
    """The newest ai.onnx opset the installed onnx package knows."""
    return onnx.defs.onnx_opset_version()


def ir_version_for(opset: int) -> int:
    """The lowest IR version that goes with an ai.onnx opset (from onnx's version table)."""
    for _release, ir, ai_onnx, *_ in onnx.helper.VERSION_TABLE:
        if ai_onnx >= opset:
            return ir
    return onnx.helper.VERSION_TABLE[-1][1]


def _cnncomp_version() -> str:
    from cnncomp import __version__

    return __version__


def emit_onnx(graph, weights: Mapping[str, np.ndarray], opset: int = DEFAULT_OPSET,
              producer_version: str | None = None, notices: list[str] | None = None) -> onnx.ModelProto:
    """Lower a LayerGraph and its weights to an ONNX model (opset raised, with a notice, where an op needs it)."""
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset():
        raise CnnError(f"opset {opset} is not supported; choose one from {MIN_OPSET} to {max_opset()}")
    weights = check_weights(weights, graph, "the weights dict", allow_unexpected=True)
    ops = all_ops()
    layers = list(graph.layers())
    reserved = {layer.name for layer in layers} | set(graph.output_names) | set(weights)
    b = OnnxBuilder(reserved)
    tensor_of: dict[str, str] = {}
    inputs = []
    for name in graph.inputs:
        layer = graph.layer(name)
        inputs.append(_value_info(name, layer))
        tensor_of[name] = name
        b.shapes[name] = tuple(layer.shape)
    for layer in layers:
        if layer.op == "input":
            continue
        tensor_of[layer.name] = _lower(b, ops, graph, layer, tensor_of, weights)
    outputs = _outputs(b, graph, tensor_of)
    final_opset = _final_opset(b, opset, notices)
    _check_node_opsets(b, final_opset)
    g = helper.make_graph(b.nodes, graph.name, inputs, outputs, b.used_initializers(o.name for o in outputs))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", final_opset)], producer_name="cnncomp",
                              producer_version=producer_version or _cnncomp_version())
    model.ir_version = ir_version_for(final_opset)
    _set_metadata(model, graph, producer_version or _cnncomp_version())
    return model


def _value_info(name: str, layer) -> onnx.ValueInfoProto:
    dims = [d if isinstance(d, (int, str)) else None for d in layer.shape]
    return helper.make_tensor_value_info(name, ONNX_DTYPES[layer.dtype], dims)


def _lower(b: OnnxBuilder, ops: dict, graph, layer, tensor_of: dict, weights: dict) -> str:
    """Lower one layer; errors name the layer and its spec location."""
    op = ops.get(layer.op)
    if op is None:
        raise CnnError(f"layer '{layer.name}' has unknown op '{layer.op}'", layer.loc, layer.chain)
    b.begin_layer(layer)
    try:
        ins = [tensor_of[u] for u in graph.input_names(layer.name)]
        wnames = {}
        for suffix in layer.weights:
            name = f"{layer.name}.{suffix}"
            wnames[suffix] = b.add_initializer(name, weights[name].astype(np_dtype(layer.dtype), copy=False))
        out = op.to_onnx(b, layer, ins, wnames)
    except CnnError as err:
        raise err.with_location(layer.loc, layer.chain) from None
    except Exception as exc:
        raise CnnError(f"while lowering layer '{layer.name}' ({layer.where}) to ONNX: {type(exc).__name__}: {exc}",
                       layer.loc, layer.chain) from exc
    finally:
        b.end_layer()
    b.shapes[out] = tuple(layer.shape)
    return out


def _outputs(b: OnnxBuilder, graph, tensor_of: dict) -> list[onnx.ValueInfoProto]:
    """Graph outputs under the spec's output names, renaming a clashing tensor and adding Identity nodes."""
    result = []
    for out_name, layer_name in zip(graph.output_names, graph.outputs):
        layer = graph.layer(layer_name)
        tensor = tensor_of[layer_name]
        if tensor != out_name:
            if b.is_defined(out_name):  # another layer's tensor has the output's name: move it aside
                new = b.fresh(out_name + "/value")
                b.rename_tensor(out_name, new)
                tensor_of.update({k: new for k, v in tensor_of.items() if v == out_name})
                tensor = tensor_of[layer_name]
            b.begin_layer(layer)
            b.node("Identity", [tensor], out_name)
            b.end_layer()
        result.append(_value_info(out_name, layer))
    return result


def _final_opset(b: OnnxBuilder, opset: int, notices: list[str] | None) -> int:
    needed, whats = b.required_opset()
    if needed <= opset:
        return opset
    if needed > max_opset():
        raise CnnError(f"{', '.join(whats)} needs opset {needed}, newer than the installed onnx knows ({max_opset()})")
    if notices is not None:
        notices.append(f"{', '.join(whats)} needs opset {needed}: raised the model's opset from {opset} to {needed}")
    return needed


def _check_node_opsets(b: OnnxBuilder, opset: int) -> None:
    for node in b.nodes:
        try:
            onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            since = min(s.since_version for s in onnx.defs.get_all_schemas_with_history()
                        if s.name == node.op_type and s.domain == "")
            where = f" (layer {node.name}, {node.doc_string})" if node.doc_string else ""
            raise CnnError(f"ONNX op {node.op_type}{where} needs opset {since} or newer; "
                           f"the model's opset is {opset}") from None


def _set_metadata(model: onnx.ModelProto, graph, version: str) -> None:
    props = {"producer": f"cnncomp {version}", "network": graph.name}
    if graph.meta.get("spec_hash"):
        props["spec_hash"] = str(graph.meta["spec_hash"])
    props["passes"] = json.dumps([str(p) for p in graph.meta.get("passes", [])])
    helper.set_model_props(model, props)


# ---- checking and saving ---------------------------------------------------------


SKELETON_MIN_BYTES = 1024  # initializers this large are checked apart from the graph


def check_onnx(model: onnx.ModelProto) -> None:
    """Run onnx.checker (full check) and strict, typed shape inference; raise CnnError on a failure.

    The checker serializes the whole model, weights included; the graph is checked instead as a
    skeleton whose large initializers are graph inputs of the same type and shape (small ones, such
    as Reshape's shape constants, stay, so shape inference sees their values), and each large
    initializer is checked on its own: its bytes match its dims and data type.
    """
    try:
        skeleton = _skeleton(model)
        onnx.checker.check_model(skeleton, full_check=True)
        onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CnnError(f"the emitted ONNX model is invalid: {exc}") from exc
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or not tensor.raw_data:
            continue
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        if len(tensor.raw_data) != itemsize * int(np.prod(tensor.dims, dtype=np.int64)):
            raise CnnError(f"the emitted ONNX model is invalid: initializer '{tensor.name}' holds "
                           f"{len(tensor.raw_data)} bytes for dims {list(tensor.dims)}")


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its large initializers turned into typed graph inputs (no weight bytes copied)."""
    g = model.graph
    small, large = [], []
    for tensor in g.initializer:
        (large if len(tensor.raw_data) >= SKELETON_MIN_BYTES else small).append(tensor)
    inputs = list(g.input) + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in large]
    graph = helper.make_graph(list(g.node), g.name, inputs, list(g.output), small, value_info=list(g.value_info))
    skeleton = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name=model.producer_name)
    skeleton.ir_version = model.ir_version
    return skeleton


def weights_nbytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_onnx(model: onnx.ModelProto, path: str | Path, external_data: bool | None = None) -> None:
    """Write a model atomically; weights go to `PATH.data` when they exceed 2 GB (or when asked)."""
    path = Path(path)
    if external_data is None:
        external_data = weights_nbytes(model) > EXTERNAL_DATA_LIMIT
    if external_data:
        _save_external(model, path)
    else:
        atomic_write(path, lambda tmp: _write_streamed(model, tmp))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload_len: int) -> bytes:
    """The key and length of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(payload_len)


_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9  # field numbers in onnx.proto


def _is_repeated(descriptor) -> bool:
    flag = getattr(descriptor, "is_repeated", None)  # protobuf >= 6; older ones only have .label
    if flag is None:
        return descriptor.label == descriptor.LABEL_REPEATED
    return flag() if callable(flag) else bool(flag)


def _without(message, empty, skip: str):
    """A copy of a protobuf message with every set field but one (that one is not copied at all)."""
    for descriptor, value in message.ListFields():
        if descriptor.name == skip:
            continue
        target = getattr(empty, descriptor.name)
        if _is_repeated(descriptor):
            target.extend(value)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(empty, descriptor.name, value)
    return empty


def _write_streamed(model: onnx.ModelProto, path: str) -> None:
    """Write a model without serializing it as one message: the model and graph without their
    initializers first, then each initializer as its own `graph { initializer { ... } }` piece,
    its raw bytes written straight out. Protobuf merges repeated fields of concatenated messages,
    so the file parses to the same model (tests check it), and a 100 MB model is not copied
    into one 100 MB buffer first."""
    graph = model.graph
    head = _without(model, onnx.ModelProto(), "graph")
    skeleton = _without(graph, onnx.GraphProto(), "initializer")
    skeleton_bytes = skeleton.SerializeToString()
    with open(path, "wb") as f:
        f.write(head.SerializeToString())
        f.write(_field(_MODEL_GRAPH, len(skeleton_bytes)) + skeleton_bytes)
        for tensor in graph.initializer:
            raw = tensor.raw_data
            if raw:
                meta_bytes = _without(tensor, onnx.TensorProto(), "raw_data").SerializeToString()
                tensor_len = len(meta_bytes) + len(_field(_TENSOR_RAW_DATA, len(raw))) + len(raw)
                prefix = _field(_GRAPH_INITIALIZER, tensor_len)
                f.write(_field(_MODEL_GRAPH, len(prefix) + tensor_len) + prefix + meta_bytes
                        + _field(_TENSOR_RAW_DATA, len(raw)))
                f.write(raw)
            else:
                tensor_bytes = tensor.SerializeToString()
                prefix = _field(_GRAPH_INITIALIZER, len(tensor_bytes))
                f.write(_field(_MODEL_GRAPH, len(prefix) + len(tensor_bytes)) + prefix + tensor_bytes)


def _save_external(model: onnx.ModelProto, path: Path) -> None:
    """Save with the weights in `PATH.data`: both written under temporary names, then moved, data first."""
    from onnx.external_data_helper import convert_model_to_external_data, uses_external_data

    location = path.name + ".data"
    data_tmp = path.with_name(f".{location}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    convert_model_to_external_data(copy, all_tensors_to_one_file=True, location=data_tmp.name, size_threshold=1024)

    def write(tmp: str) -> None:
        onnx.save_model(copy, tmp)  # also writes the tensors to data_tmp, beside tmp
        for tensor in copy.graph.initializer:
            if uses_external_data(tensor):
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = location
        Path(tmp).write_bytes(copy.SerializeToString())
        if data_tmp.exists():  # absent when every tensor is under the 1 KiB threshold
            os.replace(data_tmp, path.with_name(location))

    try:
        atomic_write(path, write)
    finally:
        if data_tmp.exists():
            data_tmp.unlink()
