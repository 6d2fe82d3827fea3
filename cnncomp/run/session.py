"""ONNX Runtime sessions on an explicit runtime (run/runtime.py's registry).

A runtime (`cpu`, `cuda`, `tensorrt`, ...) asks for its provider and fails with a clear message
(naming what to install) when it is not available; `auto` takes the best one available and says
when it falls back to the CPU.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from cnncomp.errors import CnnError
from cnncomp.run.runtime import available_providers, choose, runtimes  # noqa: F401  (available_providers: public)


@dataclass
class TensorRTOptions:
    """ONNX Runtime TensorRT provider options that cnncomp passes through."""

    fp16: bool = False
    engine_cache: str | None = None
    workspace_bytes: int = 1 << 30
    extra: dict = field(default_factory=dict)

    def as_provider_options(self) -> dict:
        options = {"trt_fp16_enable": self.fp16, "trt_max_workspace_size": self.workspace_bytes}
        if self.engine_cache:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=self.engine_cache)
        options.update(self.extra)
        return options


def resolve_providers(choice: str, trt: TensorRTOptions | None = None, quiet: bool = False,
                      settings: dict | None = None) -> list:
    """The ONNX Runtime provider list for a --runtime choice (run/runtime.py), with the runtime's own
    `settings` (its declared options by name, e.g. trt_fp16); a missing runtime is a CnnError."""
    runtime = choose(choice, quiet)
    if not runtime.available():
        raise CnnError(runtime.missing())
    settings = dict(settings or {})
    if trt is not None:
        settings["trt"] = trt
    return runtime.providers(settings)


def provider_name(providers: list) -> str:
    """The runtime's name for the first provider of a list."""
    first = providers[0]
    name = first[0] if isinstance(first, tuple) else first
    return next((r.name for r in runtimes().values() if r.provider == name), name)


class Session:
    """An ONNX Runtime inference session over a model (path, bytes or ModelProto)."""

    def __init__(self, model, provider: str = "cpu", trt: TensorRTOptions | None = None, threads: int = 0,
                 optimization: str = "all", quiet: bool = False, spinning: bool = True, settings: dict | None = None,
                 shared: dict | None = None):
        """`shared`: {initializer name: OrtValue} for the model's initializers declared as external data, shared
        by sessions without copying (sensitivity.py derives 71 models from ResNet-50's weights)."""
        import onnxruntime as ort

        from cnncomp.run.parallel import in_worker

        self.providers = resolve_providers(provider, trt, quiet, settings)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if not threads and in_worker():  # a search's forked worker: one core each
            threads = 1
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:  # idle worker threads would steal the cores of other sessions timed beside this one
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        if shared:
            options.add_external_initializers(list(shared), list(shared.values()))
        if not isinstance(model, (str, bytes)):
            model = model.SerializeToString()
        try:
            self.session = ort.InferenceSession(model, options, providers=self.providers)
        except Exception as e:  # ORT raises its own exception types for bad models and providers
            raise CnnError(f"ONNX Runtime could not load the model: {e}") from None
        wanted = self.providers[0][0] if isinstance(self.providers[0], tuple) else self.providers[0]
        if wanted not in self.session.get_providers():
            raise CnnError(f"ONNX Runtime did not start {wanted} (it fell back to {self.session.get_providers()}); "
                           f"{runtimes()[provider_name(self.providers)].install_hint}")
        self.provider = provider_name(self.providers)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def median_seconds(self, feeds: dict[str, np.ndarray], repeats: int = 20, warmup: int = 3) -> float:
        """Median wall time of one run on these inputs, after some warm-up runs."""
        from cnncomp.run.timing import median_run_seconds

        return median_run_seconds(self, feeds, repeats, warmup)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model; return {output name: array}."""
        names = outputs or self.output_names
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise CnnError(f"missing inputs: {', '.join(missing)} (the model takes {', '.join(self.input_names)})")
        try:
            values = self.session.run(names, {k: feeds[k] for k in self.input_names})
        except Exception as e:
            raise CnnError(f"ONNX Runtime failed to run the model: {e}") from None
        return dict(zip(names, values))


def runtime_load_problem(model) -> str | None:
    """Why ONNX Runtime's CPU provider cannot load `model` (e.g. no float64 Conv kernel), or None when it can."""
    try:
        Session(model, "cpu", quiet=True, optimization="basic")
    except CnnError as e:
        return e.message
    return None


def refuse_unloadable(model, output, strict: bool = True, warn=None) -> None:
    """Never write, silently, a model ONNX Runtime cannot load: an error (a warning when not `strict`,
    e.g. float16 models that only a GPU provider runs)."""
    problem = runtime_load_problem(model)
    if problem is None:
        return
    if strict:
        raise CnnError(f"not writing {output}: {problem}")
    if warn is not None:
        warn(f"warning: {problem}; its CPU provider will not run {output}\n")
