"""cnncomp: a compiler for convolutional networks written in the .cnn language."""

__version__ = "0.1.0"

from cnncomp.api import compile, import_onnx, load, to_torch, verify  # noqa: E402

__all__ = ["load", "compile", "verify", "to_torch", "import_onnx", "__version__"]
