"""The Python API: cnncomp.load, compile, verify, to_torch."""

from __future__ import annotations

from pathlib import Path

from cnncomp.ir.graph import LayerGraph


def load(spec: str | Path, defines: dict[str, str] | None = None) -> LayerGraph:
    """Parse and elaborate a .cnn spec into a LayerGraph (every shape known, every layer named)."""
    from cnncomp.dsl.loader import load_spec

    return load_spec(spec, defines)
