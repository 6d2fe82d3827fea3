"""cnncomp: a compiler for convolutional networks written in the .cnn language."""

__version__ = "0.1.0"

from cnncomp.api import load  # noqa: E402

__all__ = ["load", "__version__"]
