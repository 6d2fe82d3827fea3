"""Low-level reading of ONNX graphs, shared by the ONNX importer (frontend/onnx), the precision converters
(precision/) and the deployment checks (deployment/): node attributes, the opset, who writes and who reads
each tensor. Only the `onnx` package below it: any layer may use it.
"""

from __future__ import annotations

import onnx


SKELETON_MIN_BYTES = 1024  # initializers this large become graph inputs in a skeleton


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its large initializers turned into typed graph inputs, no weight bytes copied: what
    checking and shape inference need (copying ResNet-50's 100 MB took 1 s). Small ones, Reshape's shape
    constants among them, stay initializers, so shape inference still sees their values."""
    g = model.graph
    small, large = [], []
    for tensor in g.initializer:
        (large if len(tensor.raw_data) >= SKELETON_MIN_BYTES else small).append(tensor)
    inputs = list(g.input) + [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in large]
    graph = onnx.helper.make_graph(list(g.node), g.name, inputs, list(g.output), small, value_info=list(g.value_info))
    out = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), producer_name=model.producer_name)
    out.ir_version = model.ir_version
    return out


def add_outputs(graph: onnx.GraphProto, names) -> None:
    """Make the tensors `names` outputs of `graph` too (in place; those it outputs already stay as they are)."""
    present = {o.name for o in graph.output}
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(names) if n not in present)


def attrs_of(node: onnx.NodeProto) -> dict:
    """A node's attributes as Python values (bytes decoded to str)."""
    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def opset_of(model: onnx.ModelProto, default: int | None = None) -> int | None:
    """The version of the default (ai.onnx) opset the model imports, or `default` when it imports none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default)


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """{tensor: the node that writes it} over the graph's nodes (unused optional outputs, named '', left out)."""
    return {name: node for node in model.graph.node for name in node.output if name}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """{tensor: the nodes that read it, in graph order}."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found
