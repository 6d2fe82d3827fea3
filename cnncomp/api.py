"""The Python API: cnncomp.load, compile, verify, to_torch."""

from __future__ import annotations

from pathlib import Path

from cnncomp.ir.graph import LayerGraph


def load(spec: str | Path, defines: dict[str, str] | None = None) -> LayerGraph:
    """Parse and elaborate a .cnn spec into a LayerGraph (every shape known, every layer named)."""
    from cnncomp.frontend.cnn.loader import load_spec

    return load_spec(spec, defines)


def compile(spec, output: str | Path | None = None, opt_level: int = 1, passes=None, weights=None, seed: int = 0,
            opset: int = 17, defines: dict[str, str] | None = None, precision: str = "fp32", calibration=None,
            preprocess: str | None = None, calibration_method: str | None = None, max_error: float = 0.01):
    """Compile a spec to an ONNX ModelProto (optimized at -O<opt_level> or by `passes`); save it if `output`.

    precision="int8" quantizes it to QDQ int8, calibrated on `calibration` (a path to .npz/.npy/an image
    folder, or a dict of arrays), keeping sensitive layers in float32 to stay within `max_error`."""
    from cnncomp.emit.onnx import save_onnx
    from cnncomp.errors import CnnError
    from cnncomp.pipeline import emit_model, optimize, quantize_model

    if precision not in ("fp32", "int8"):
        raise CnnError(f"compile() takes precision 'fp32' or 'int8', not '{precision}'")
    compiled = optimize(spec, defines, weights, seed, opt_level, passes)
    model = emit_model(compiled, opset)
    if precision == "int8":
        model, report = quantize_model(compiled, model, calibration, preprocess, calibration_method, max_error,
                                       seed=seed)
        if not report.ok:
            raise CnnError(f"int8: relative error {report.error:.3g} exceeds max_error {max_error:g}")
    if output is not None:
        save_onnx(model, output)
    return model


def verify(spec, passes=None, opt_level: int = 1, weights=None, seed: int = 0, provider: str = "cpu",
           atol=None, rtol=None, per_layer: bool = False, defines: dict[str, str] | None = None, opset: int = 17):
    """Compile a spec and compare ONNX Runtime's outputs with the PyTorch reference; returns a VerifyReport (.ok)."""
    from cnncomp.verification.harness import verify as run_verify
    from cnncomp.pipeline import emit_model, optimize

    compiled = optimize(spec, defines, weights, seed, opt_level, passes)
    model = emit_model(compiled, opset)
    report, _, _ = run_verify(compiled.ref_graph, compiled.ref_weights, model, compiled.graph, provider=provider,
                              seed=seed, atol=atol, rtol=rtol, per_layer=per_layer)
    return report


def to_torch(spec, weights=None, seed: int = 0, defines: dict[str, str] | None = None):
    """The spec as a trainable torch nn.Module whose state_dict keys are the layer weight names."""
    from cnncomp.run.reference import to_torch as build
    from cnncomp.pipeline import load_graph

    return build(load_graph(spec, defines), weights, seed)
