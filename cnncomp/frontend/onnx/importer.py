"""The import job: an ONNX file to spec text, a LayerGraph and weights keyed by the spec's layer names.

The spec is checked before anything is written: it must elaborate to the
imported graph's layers and shapes, and the weights must fit it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from cnncomp.errors import CnnError
from cnncomp.frontend.onnx.build import build_graph
from cnncomp.frontend.onnx.model import OnnxModel, load_onnx
from cnncomp.ir.graph import LayerGraph


@dataclass
class ImportResult:
    """What an import produced: the spec text, its elaborated graph and its weights."""

    text: str
    graph: LayerGraph
    weights: dict[str, np.ndarray]


def import_model(path, network: str | None = None) -> ImportResult:
    """Read an ONNX model (a file, or an onnx.ModelProto) and return the equivalent .cnn spec and weights
    (nothing is written)."""
    from cnncomp.frontend.onnx.writer import write_spec
    from cnncomp.ir.printer import emit_cnn
    from cnncomp.ir.weights import check_weights

    if isinstance(path, onnx.ModelProto):
        model, label = OnnxModel(path, "<model>"), network or path.graph.name or "model"
    else:
        model, label = load_onnx(path), Path(path).name
    graph, weights = build_graph(model, network or Path(label).stem)
    header = f"Imported from {label} by cnncomp import."
    source = f"<import of {label}>"
    text = write_spec(graph, header)
    spec_graph, problem = _elaborate_same(text, graph, source)
    if spec_graph is None:  # the block writer missed: the flat listing names every layer explicitly
        text = emit_cnn(graph, header)
        spec_graph, flat_problem = _elaborate_same(text, graph, source)
        if spec_graph is None:
            raise CnnError(f"{path}: the imported spec does not reproduce the model ({problem}; flat: "
                           f"{flat_problem}); please report this with the model")
    check_weights(weights, spec_graph, f"the weights imported from {path}")
    return ImportResult(text, spec_graph, weights)


def _elaborate_same(text: str, imported: LayerGraph, source: str) -> tuple[LayerGraph | None, str]:
    """The spec text elaborated, if it has the imported graph's layers, ops, shapes and wiring; else why not."""
    from cnncomp.frontend.cnn.loader import load_text

    try:
        spec = load_text(text, source)
    except CnnError as err:
        return None, err.message
    for layer in imported.layers():
        if layer.name not in spec:
            return None, f"layer '{layer.name}' is missing"
        other = spec.layer(layer.name)
        if (other.op, other.shape, other.attrs) != (layer.op, layer.shape, layer.attrs):
            return None, f"layer '{layer.name}' differs"
        if spec.input_names(layer.name) != imported.input_names(layer.name):
            return None, f"layer '{layer.name}' reads other inputs"
    if len(spec) != len(imported) or spec.outputs != imported.outputs:
        return None, "the layers or outputs differ"
    return spec, ""
