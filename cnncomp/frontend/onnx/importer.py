"""Reading an ONNX model: a LayerGraph and weights keyed by its layer names.

The import job (pipeline.import_model) writes the graph as a spec through the
one .cnn writer (cnncomp.emit.cnn), which checks that the text elaborates to
the imported graph's layers and shapes, and checks the weights against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from cnncomp.frontend.onnx.build import build_graph
from cnncomp.frontend.onnx.model import OnnxModel, load_onnx
from cnncomp.ir.graph import LayerGraph


@dataclass
class ImportedModel:
    """An ONNX model read as a LayerGraph, its weights keyed by layer names, and what to call it."""

    graph: LayerGraph
    weights: dict[str, np.ndarray]
    label: str  # the file's name (or "<model>")


def read_model(path, network: str | None = None, input_shape: dict | None = None) -> ImportedModel:
    """Read an ONNX model (a file, or an onnx.ModelProto) as a LayerGraph and weights; the spec text is
    written by the .cnn writer (cnncomp.emit.cnn) in the import job (pipeline.import_model)."""
    if isinstance(path, onnx.ModelProto):
        model, label = OnnxModel(path, "<model>"), network or path.graph.name or "model"
    else:
        model, label = load_onnx(path), Path(path).name
    graph, weights = build_graph(model, network or Path(label).stem, input_shape)
    return ImportedModel(graph, weights, label)
