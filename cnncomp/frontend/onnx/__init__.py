"""`cnncomp import`: an ONNX model back to a readable .cnn spec and its weights."""

from cnncomp.frontend.onnx.importer import ImportResult, import_model  # noqa: F401
