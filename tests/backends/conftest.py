"""Shared helpers for the back-end tests: seeded inputs, ONNX validation, ONNX Runtime runs.

Helpers are fixtures (not an importable module) so that tests/ needs no __init__.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cnncomp.emit.onnx.builder import np_dtype
from cnncomp.emit.onnx import emit_onnx
from cnncomp.run.reference import run_reference
from cnncomp.ir.weights import init_weights
from cnncomp.frontend.cnn.loader import load_text

ATOL, RTOL = 1e-5, 1e-4  # fp32, emitted model under ONNX Runtime against the PyTorch reference
BATCH = 2


def concrete(shape: tuple, batch: int = BATCH) -> tuple:
    """A shape with every symbolic dim set to the batch size."""
    return tuple(batch if isinstance(d, str) else d for d in shape)


def random_inputs(graph, seed: int = 0, scale: float = 2.0) -> dict[str, np.ndarray]:
    """Seeded normal inputs for every graph input, in its dtype."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in graph.inputs:
        layer = graph.layer(name)
        out[name] = (rng.standard_normal(concrete(layer.shape)) * scale).astype(np_dtype(layer.dtype))
    return out


def assert_valid_onnx(model: onnx.ModelProto) -> None:
    """The full checker and strict shape inference both accept the model."""
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def ort_run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a model on ONNX Runtime's CPU provider; outputs by name."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def assert_close(got: np.ndarray, want: np.ndarray, atol: float, rtol: float, what: str) -> None:
    """Shape and dtype first, then values."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, err_msg=what)


def compare(spec: str, *, seed: int = 0, atol: float = ATOL, rtol: float = RTOL, opset: int = 17,
            scale: float = 2.0, float64: bool = True):
    """Emit a spec, validate the model, run it on ORT and compare every output with the reference."""
    graph = load_text(spec, "case.cnn")
    weights = init_weights(graph, seed)
    model = emit_onnx(graph, weights, opset=opset)
    assert_valid_onnx(model)
    inputs = random_inputs(graph, seed, scale)
    want = run_reference(graph, weights, inputs)
    got = ort_run(model, inputs)
    assert list(got) == graph.output_names
    for name in graph.output_names:
        assert_close(got[name], want[name], atol, rtol, f"output {name}")
    if float64:  # the fp32 model against a float64 reference: same tolerance
        want64 = run_reference(graph, weights, inputs, dtype=torch.float64)
        for name in graph.output_names:
            assert want64[name].dtype == np.float64
            np.testing.assert_allclose(got[name], want64[name], atol=atol, rtol=rtol, err_msg=f"{name} vs fp64")
    return SimpleNamespace(graph=graph, weights=weights, model=model, inputs=inputs, want=want, got=got)


@pytest.fixture
def helpers():
    """The helpers above, for tests."""
    return SimpleNamespace(compare=compare, random_inputs=random_inputs, assert_valid_onnx=assert_valid_onnx,
                           ort_run=ort_run, assert_close=assert_close, concrete=concrete, ATOL=ATOL, RTOL=RTOL)
