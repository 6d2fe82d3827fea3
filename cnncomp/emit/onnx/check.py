"""Checking an emitted model: onnx.checker (full check) and strict shape inference, without copying its weights."""

from __future__ import annotations

import numpy as np
import onnx

from cnncomp.errors import CnnError
from cnncomp.onnx_graph import skeleton


def check_onnx(model: onnx.ModelProto) -> None:
    """Run onnx.checker (full check) and strict, typed shape inference; raise CnnError on a failure.

    The checker serializes the whole model, weights included; the graph is checked instead as a
    skeleton whose large initializers are graph inputs of the same type and shape (small ones, such
    as Reshape's shape constants, stay, so shape inference sees their values), and each large
    initializer is checked on its own: its bytes match its dims and data type.
    """
    try:
        skeleton_model = skeleton(model)
        onnx.checker.check_model(skeleton_model, full_check=True)
        onnx.shape_inference.infer_shapes(skeleton_model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CnnError(f"the emitted ONNX model is invalid: {exc}") from exc
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or not tensor.raw_data:
            continue
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        if len(tensor.raw_data) != itemsize * int(np.prod(tensor.dims, dtype=np.int64)):
            raise CnnError(f"the emitted ONNX model is invalid: initializer '{tensor.name}' holds "
                           f"{len(tensor.raw_data)} bytes for dims {list(tensor.dims)}")
