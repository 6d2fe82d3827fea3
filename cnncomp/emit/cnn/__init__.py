"""The one .cnn writer: a LayerGraph as a readable spec, with blocks and repeats (docs/architecture.md)."""

from cnncomp.emit.cnn.spec import Written, write_cnn, write_program  # noqa: F401
