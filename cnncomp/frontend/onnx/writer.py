"""The imported graph as .cnn text."""

from __future__ import annotations

from cnncomp.ir.graph import LayerGraph
from cnncomp.ir.printer import emit_cnn


def write_spec(graph: LayerGraph, header: str = "") -> str:
    """Spec text for an imported graph."""
    return emit_cnn(graph, header)
