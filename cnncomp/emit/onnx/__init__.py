"""The ONNX emitter: lower a LayerGraph (lower.py, through each op's to_onnx and builder.py), check it, save it."""

from cnncomp.emit.onnx.check import check_onnx  # noqa: F401
from cnncomp.emit.onnx.lower import emit_onnx, ir_version_for, max_opset  # noqa: F401
from cnncomp.emit.onnx.save import save_onnx, weights_nbytes  # noqa: F401
