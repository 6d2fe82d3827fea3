"""cnncomp: a compiler for convolutional networks written in the .cnn language."""

from cnncomp.api import bench, compile, deploy, import_onnx, load, options, serve, to_torch, verify
from cnncomp.version import __version__

__all__ = ["load", "compile", "verify", "deploy", "serve", "bench", "options", "to_torch", "import_onnx", "__version__"]
