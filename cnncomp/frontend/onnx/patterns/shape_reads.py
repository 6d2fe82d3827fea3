"""Sizes a model reads from another tensor's shape at run time: `F.interpolate(y, size=x.shape[-2:])`.

The exporter writes them as Shape(x) -> Gather/Slice -> (Cast, Unsqueeze) -> Concat; the importer traces
such a chain back to the dims it reads (`DimOf(x, 2)`), which the graph builder replaces with the symbolic
dims the registry worked out for x's layer: an upsample to those sizes is exact for every input size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from cnncomp.frontend.onnx.model import SYMBOLIC_DIM, OnnxModel, attrs_of
from cnncomp.frontend.onnx.patterns.base import Unsupported


@dataclass(frozen=True)
class DimOf:
    """Dim `axis` of the ONNX tensor `tensor`, known only once the layer computing it has its shape."""

    tensor: str
    axis: int


def shape_values(m: OnnxModel, tensor: str, nodes: list[onnx.NodeProto]) -> list:
    """The 1-D int tensor `tensor` as a list of ints and DimOfs; the nodes computing it go into `nodes`."""
    value = m.const(tensor)
    if value is not None and not (value.dtype == np.int64 and np.any(value == SYMBOLIC_DIM)):
        return [int(v) for v in value.reshape(-1)]
    node = m.producer.get(tensor)
    if node is None:
        raise Unsupported(f"its sizes read '{tensor}', which is computed at run time")
    op, a = node.op_type, attrs_of(node)
    if op == "Shape":
        shape = m.shapes.get(node.input[0])
        if shape is None:
            raise Unsupported(f"the rank of '{node.input[0]}', whose shape its sizes read, is unknown")
        found = [DimOf(node.input[0], i) for i in range(len(shape))][a.get("start", 0):a.get("end", None)]
    elif op in ("Cast", "Identity", "Unsqueeze", "Squeeze"):  # the values stay; only the type or rank changes
        found = shape_values(m, node.input[0], nodes)
    elif op == "Concat" and a.get("axis", 0) in (0, -1):
        found = [v for name in node.input for v in shape_values(m, name, nodes)]
    elif op == "Gather" and a.get("axis", 0) == 0 and m.const(node.input[1]) is not None:
        values = shape_values(m, node.input[0], nodes)
        found = [values[int(i)] for i in m.const(node.input[1]).reshape(-1)]
    elif op == "Slice" and all(m.const(n) is not None for n in node.input[1:] if n):
        values = shape_values(m, node.input[0], nodes)
        starts, ends = (int(m.const(node.input[i]).reshape(-1)[0]) for i in (1, 2))
        steps = int(m.const(node.input[4]).reshape(-1)[0]) if len(node.input) > 4 and node.input[4] else 1
        found = values[slice(max(starts, -len(values) - 1), min(ends, len(values) + 1), steps)]
    else:
        raise Unsupported(f"its sizes come from a {op} node, which the importer does not read")
    nodes.append(node)
    return found
