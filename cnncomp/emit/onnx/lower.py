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

The same graph and weights always give the same bytes (`check.py` checks a
model, `save.py` writes one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper

from cnncomp.emit.onnx.sizes import symbol_sources
from cnncomp.emit.onnx.builder import ONNX_DTYPES, OnnxBuilder, np_dtype
from cnncomp.ir.weights import check_weights
from cnncomp.errors import CnnError
from cnncomp.ops.registry import all_ops

DEFAULT_OPSET = 17
MIN_OPSET = 13  # Softmax over one axis, Clip with min/max inputs, optional Resize roi


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
    from cnncomp.version import __version__

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
    b.symbol_sources = symbol_sources(graph)
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
