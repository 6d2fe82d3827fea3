"""The Python API: cnncomp.load, compile, verify, deploy, to_torch (thin over cnncomp.pipeline).

Everything `cnncomp compile`, `verify` and `deploy` can do is here too. Bad options raise
cnncomp.errors.UsageError (a CnnError); a failed numeric check raises CheckFailed, with its report.
"""

from __future__ import annotations

from pathlib import Path

from cnncomp.errors import CnnError
from cnncomp.pipeline import CheckOptions, Source, load  # noqa: F401  (load is the public face of the pipeline's)


class CheckFailed(CnnError):
    """compile(..., verify=True): the emitted model does not match the reference; `.report` says how."""

    def __init__(self, report):
        super().__init__(f"the emitted model does not match the reference; nothing written\n{report.format()}")
        self.report = report


def compile(spec, output: str | Path | None = None, opt_level: int = 1, passes=None, weights=None, seed: int = 0,
            opset: int = 17, defines: dict[str, str] | None = None, *, emit: str = "onnx", precision: str = "fp32",
            keep_io_fp32: bool = False, target: str = "onnx", verify: bool = False, provider: str = "cpu",
            atol=None, rtol=None, max_error: float | None = None, calibration=None,
            autotune: bool = False, min_batch: int = 1, opt_batch: int | None = None, max_batch: int = 8,
            preprocess: str | None = None, calibration_method: str | None = None, jobs: int = 1,
            bias_correction: str = "auto", log=None, shape_ranges: dict | None = None):
    """Compile a spec (optimized at -O<opt_level> or by `passes`) and return the ONNX ModelProto in its
    `precision` (fp32, fp16, int8), or the text for emit="cnn"/"dot"/"torch". With `output`, write it there
    (target="tensorrt": a TensorRT engine, its profile over min/opt/max_batch, and for an input with symbolic
    sizes over `shape_ranges`, {"x": ((1, 3, 256, 256), (1, 3, 512, 512), (4, 3, 1024, 1024))}). With `verify`, check it against the reference first and raise
    CheckFailed, writing nothing, on a mismatch. `log` receives warnings and notes, one line each.

    `calibration`: inputs (a dict of arrays, or a .npz/.npy path) on which -O3 measures its error budget and
    int8 calibrates; for int8 also a folder of images (with `preprocess`). int8 keeps the most sensitive
    layers in float32 so that the outputs stay within `max_error` on held-out samples, and corrects the biases
    for the mean shift of int8 weights (`bias_correction`: auto, where it lowers the error; on; off)."""
    from cnncomp.log import silent
    from cnncomp.pipeline import compile_spec

    source = Source(spec, defines, weights, seed, opt_level, passes, max_error, autotune,
                    _o3_calibration(calibration), opset, jobs)
    options = CheckOptions(provider, seed, atol=atol, rtol=rtol, max_error=max_error)
    int8 = _int8_options(calibration, preprocess, calibration_method, max_error, seed, bias_correction)
    result = compile_spec(source, output, emit, precision, keep_io_fp32, target,
                          (min_batch, opt_batch, max_batch, shape_ranges), verify, options, log=log or silent, int8=int8)
    if result.report is not None and not result.report.ok:
        raise CheckFailed(result.report)
    return result.text if emit != "onnx" else result.model


def _o3_calibration(calibration):
    """The arrays -O3 measures on: a dict as given, a .npz/.npy read; an image folder serves int8 alone."""
    if calibration is None or isinstance(calibration, dict) or Path(calibration).is_dir():
        return calibration if isinstance(calibration, dict) else None
    from cnncomp.inputs import load_arrays

    return load_arrays(calibration, "calibration")


def verify(spec, passes=None, opt_level: int = 1, weights=None, seed: int = 0, provider: str = "cpu",
           atol=None, rtol=None, per_layer: bool = False, defines: dict[str, str] | None = None, opset: int = 17,
           *, precision: str = "fp32", verify_each: bool = False, inputs: dict | None = None,
           max_error: float | None = None, calibration=None, batch: int = 2, preprocess: str | None = None,
           calibration_method: str | None = None, bias_correction: str = "auto", log=None, shapes=()):
    """Compile a spec and compare ONNX Runtime's outputs with the PyTorch reference; returns a VerifyReport (.ok).
    `calibration` as in compile (int8 calibrates on it and is checked on its held-out samples). A spec with
    symbolic sizes is checked at three sizes its constraints allow and at each of `shapes`
    ([{"x": (1, 3, 512, 512)}, ...]); `report.sizes` lists them."""
    from cnncomp.log import silent
    from cnncomp.pipeline import verify_spec

    source = Source(spec, defines, weights, seed, opt_level, passes, max_error, False,
                    _o3_calibration(calibration), opset)
    options = CheckOptions(provider, seed, batch=batch, atol=atol, rtol=rtol, max_error=max_error,
                           per_layer=per_layer, shapes=list(shapes))
    return verify_spec(source, options, precision, inputs, verify_each, log=log or silent,
                       int8=_int8_options(calibration, preprocess, calibration_method, max_error, seed,
                                          bias_correction)).report


def deploy(spec, repo: str | Path, max_batch: int = 8, precision: str = "fp32", keep_io_fp32: bool = False,
           tensorrt: bool = False, instances: int = 1, kind: str | None = None, name: str | None = None,
           opt_level: int = 1, passes=None, weights=None, seed: int = 0, opset: int = 17,
           defines: dict[str, str] | None = None, *, calibration=None, preprocess: str | None = None,
           calibration_method: str | None = None, max_error: float | None = None, bias_correction: str = "auto",
           log=None) -> Path:
    """Write a Triton model repository for a spec, REPO/<name>/config.pbtxt and REPO/<name>/1/model.onnx;
    returns the model's folder. With precision="int8", `calibration` etc. as in compile."""
    from cnncomp.log import silent
    from cnncomp.pipeline import deploy_spec

    source = Source(spec, defines, weights, seed, opt_level, passes, max_error, False, _o3_calibration(calibration),
                    opset)
    return deploy_spec(source, repo, max_batch, instances, kind, tensorrt, precision, keep_io_fp32, name,
                       log=log or silent, int8=_int8_options(calibration, preprocess, calibration_method, max_error,
                                                             seed, bias_correction)).folder


def _int8_options(calibration, preprocess, calibration_method, max_error, seed, bias_correction):
    from cnncomp.pipeline import Int8Options

    return Int8Options(calibration, preprocess, calibration_method, max_error, seed=seed,
                       bias_correction=bias_correction)


def to_torch(spec, weights=None, seed: int = 0, defines: dict[str, str] | None = None):
    """The spec as a trainable torch nn.Module whose state_dict keys are the layer weight names."""
    from cnncomp.run.reference import to_torch as build

    return build(load(spec, defines), weights, seed)


def import_onnx(path: str | Path, output: str | Path, weights_out: str | Path | None = None):
    """Import an ONNX model: write OUTPUT (.cnn spec) and its weights (default: OUTPUT with .safetensors)."""
    from cnncomp.pipeline import import_onnx_model

    return import_onnx_model(path, output, weights_out)
