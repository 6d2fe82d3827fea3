"""The Python API: cnncomp.load, compile, verify, deploy, serve, bench, to_torch, import_onnx (thin over cnncomp.pipeline).

Everything `cnncomp compile`, `verify`, `deploy` and `serve` can do is here too, with the same option
names and defaults: the keyword arguments are the commands' options (cnncomp/job.py declares them once;
a flag --max-error is the keyword max_error), checked as the command line checks them. Bad options
raise cnncomp.errors.UsageError (a CnnError); a failed numeric check raises CheckFailed, with its report.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from cnncomp.errors import CnnError
from cnncomp.job import job_from_keywords, options_of
from cnncomp.pipeline import CheckOptions, load  # noqa: F401  (load is the public face of the pipeline's)


class CheckFailed(CnnError):
    """compile(..., verify=True): the emitted model does not match the reference; `.report` says how."""

    def __init__(self, report):
        super().__init__(f"the emitted model does not match the reference; nothing written\n{report.format()}")
        self.report = report


def compile(spec, output: str | Path | None = None, *, log=None, **options):
    """Compile a spec (optimized at -O<opt_level> or by `passes`) and return the ONNX ModelProto in its
    `precision` (fp32, fp16, int8), or the text for emit="cnn"/"dot"/"torch". With `output`, write it there
    (target="tensorrt": a TensorRT engine). With `verify`, check it against the reference first and raise
    CheckFailed, writing nothing, on a mismatch. `log` receives warnings and notes, one line each.

    `options` are `cnncomp compile`'s (see `options("compile")`), e.g. opt_level, passes, weights, seed,
    defines, max_error (default 0.01), calibration (a dict of arrays, a .npz/.npy path, or for int8 an image
    folder with `preprocess`), precision, runtime, atol, rtol, jobs, autotune, bias_correction."""
    from cnncomp.log import silent
    from cnncomp.pipeline import compile_job

    job = job_from_keywords("compile", spec, {"output": output, **options})
    result = compile_job(job, log or silent)
    if result.report is not None and not result.report.ok:
        raise CheckFailed(result.report)
    return result.text if job.output.emit != "onnx" else result.model


def verify(spec, *, inputs: dict | None = None, log=None, **options):
    """Compile a spec and compare ONNX Runtime's outputs with the PyTorch reference; returns a VerifyReport (.ok).
    `inputs`: arrays by input name (default: --load-inputs, else seeded); `options` are `cnncomp verify`'s."""
    from cnncomp.log import silent
    from cnncomp.pipeline import verify_job

    return verify_job(job_from_keywords("verify", spec, options), log or silent, inputs).report


def deploy(spec, repo: str | Path, *, log=None, **options) -> Path:
    """Write a Triton model repository for a spec, REPO/<name>/config.pbtxt and REPO/<name>/1/model.onnx;
    returns the model's folder. `options` are `cnncomp deploy`'s (max_batch, precision, tensorrt, kind, ...)."""
    from cnncomp.log import silent
    from cnncomp.pipeline import deploy_job

    return deploy_job(job_from_keywords("deploy", spec, {"triton": str(repo), **options}), log or silent).folder


@contextlib.contextmanager
def serve(repo_or_spec: str | Path, *, log=None, **options):
    """Run Triton Inference Server on 127.0.0.1 over a model repository (a spec is deployed to a temporary one
    first) while the `with` block runs; yields a Serving with `.endpoints` ({"HTTP": url, "gRPC": host:port,
    "metrics": url}) and `.models`. `options` are `cnncomp serve`'s (http_port, grpc_port, metrics_port,
    tritonserver, timeout; with a spec, defines and max_batch)."""
    from cnncomp.log import silent
    from cnncomp.pipeline import serve_job

    with serve_job(job_from_keywords("serve", str(repo_or_spec), options), log or silent) as serving:
        yield serving


def bench(spec, *, log=None, **options):
    """Time every runtime x precision x batch of a spec (or an ONNX model) side by side in one process; returns
    a BenchReport (.rows, .winner(batch), .table(), .to_json()). `options` are `cnncomp bench`'s (runtimes,
    precisions, batches, threads, rounds, runs, calibration, max_error, plot, ...)."""
    from cnncomp.log import silent
    from cnncomp.pipeline import bench_job

    return bench_job(job_from_keywords("bench", str(spec), options), log or silent)


def options(command: str) -> dict:
    """The options a command takes, by keyword, with their defaults: {"max_error": 0.01, ...}."""
    return {name: option.default for name, option in options_of(command).items()}


def to_torch(spec, weights=None, seed: int = 0, defines: dict[str, str] | None = None):
    """The spec as a trainable torch nn.Module whose state_dict keys are the layer weight names."""
    from cnncomp.run.reference import to_torch as build

    return build(load(spec, defines), weights, seed)


def import_onnx(path: str | Path, output: str | Path, weights_out: str | Path | None = None, **options):
    """Import an ONNX model: write OUTPUT (.cnn spec) and its weights (default: OUTPUT with .safetensors).
    Options as `cnncomp import` takes them: input_shape="x=1x3x320x480" (or {"x": (1, 3, 320, 480)}) pins
    the model's dynamic dims."""
    from cnncomp.pipeline import import_onnx_model

    from cnncomp.job import parse_shape

    if isinstance(options.get("input_shape"), str):
        options["input_shape"] = parse_shape(options["input_shape"], "input_shape")
    job = job_from_keywords("import", None, options)
    return import_onnx_model(path, output, weights_out, job.source.input_shape)
