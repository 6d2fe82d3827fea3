"""Low-level reading of ONNX graphs, shared by the ONNX importer (frontend/onnx), the precision converters
(precision/) and the deployment checks (deployment/): node attributes, the opset, who writes and who reads
each tensor. Only the `onnx` package below it: any layer may use it.
"""

from __future__ import annotations

import onnx


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
