"""`cnncomp import`: an ONNX model back to a LayerGraph and its weights (the spec text: cnncomp.emit.cnn)."""

from cnncomp.frontend.onnx.importer import ImportedModel, read_model  # noqa: F401
