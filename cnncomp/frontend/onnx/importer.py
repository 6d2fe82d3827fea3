"""The import job: an ONNX file to spec text, a LayerGraph and weights keyed by the spec's layer names.

The spec is checked before anything is written: it must elaborate to the
imported graph's layers and shapes, and the weights must fit it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncomp.errors import CnnError
from cnncomp.frontend.onnx.build import build_graph
from cnncomp.frontend.onnx.model import load_onnx
from cnncomp.ir.graph import LayerGraph


@dataclass
class ImportResult:
    """What an import produced: the spec text, its elaborated graph and its weights."""

    text: str
    graph: LayerGraph
    weights: dict[str, np.ndarray]


def import_model(path: str | Path, network: str | None = None) -> ImportResult:
    """Read an ONNX model and return the equivalent .cnn spec and weights (nothing is written)."""
    from cnncomp.frontend.cnn.loader import load_text
    from cnncomp.frontend.onnx.writer import write_spec
    from cnncomp.ir.weights import check_weights

    model = load_onnx(path)
    graph, weights = build_graph(model, network or Path(path).stem)
    header = f"Imported from {Path(path).name} by cnncomp import."
    text = write_spec(graph, header)
    try:
        spec_graph = load_text(text, f"<import of {Path(path).name}>")
    except CnnError as err:  # a writer bug, not the user's: say so, with the offending text
        raise CnnError(f"{path}: the imported spec does not elaborate ({err.message}); "
                       "please report this with the model") from None
    _check_same(graph, spec_graph, path)
    check_weights(weights, spec_graph, f"the weights imported from {path}")
    return ImportResult(text, spec_graph, weights)


def _check_same(imported: LayerGraph, spec: LayerGraph, path) -> None:
    for layer in imported.layers():
        if layer.name not in spec or spec.layer(layer.name).shape != layer.shape \
                or spec.layer(layer.name).op != layer.op:
            raise CnnError(f"{path}: the imported spec does not reproduce layer '{layer.name}'; "
                           "please report this with the model")
