"""The runtime registry: where an emitted model runs (`--runtime`, formerly `--provider`).

A runtime is one class with every fact about it: its name on the command line, a one-line help,
the ONNX Runtime execution provider it opens a session with (and the ones behind it), what it
needs (the install hint when it is missing), its place in `auto`'s order, and its own options
(Option declarations, e.g. the TensorRT provider's --trt-fp16), which the job description adds
to the commands that run a model.

Adding one (OpenVINO, say) is one module in run/ with a `@register_runtime` class, listed in
RUNTIME_MODULES below, plus its line in docs/architecture.md; `--runtime` takes it from then on.
"""

from __future__ import annotations

import sys

from cnncomp.errors import CnnError
from cnncomp.options import Option
from cnncomp.registry import Registry

AUTO = "auto"  # not a runtime: the best one available (the GPU ones by `auto_rank`), else the CPU


class Runtime:
    """One runtime; subclasses set the class attributes and may override `providers`."""

    name: str = ""
    help: str = ""
    provider: str = ""  # ONNX Runtime's name of the execution provider
    fallbacks: tuple[str, ...] = ()  # the providers behind it, for the nodes it does not take
    auto_rank: int | None = None  # `auto` tries runtimes with a rank, lowest first; None: never chosen by auto
    install_hint: str = ""
    options: tuple[Option, ...] = ()  # its own options (group "check"), e.g. TensorRT's --trt-fp16
    triton_cpu_accelerator: str | None = None  # what a Triton config names to run CPU instances on it (openvino)
    symmetric_int8: bool = False  # its int8 takes no zero points (TensorRT): int8 activations, not uint8

    def available(self) -> bool:
        return self.provider in available_providers()

    def providers(self, settings: dict) -> list:
        """The ONNX Runtime provider list a session opens with; `settings` holds this runtime's options."""
        return [self.provider, *self.fallbacks]

    def missing(self) -> str:
        """Why this runtime cannot run here, in words."""
        return (f"the {self.name} provider ({self.provider}) is not available in this onnxruntime "
                f"(available: {', '.join(available_providers())}); {self.install_hint}")

    def session(self, model, settings: dict | None = None, precision: str = "fp32", threads: int = 0,
                quiet: bool = False, **options):
        """A session of `model` on this runtime: run(feeds) -> {output: array}, input_names, output_names.
        ONNX Runtime's providers open run/session.py's Session (the model already is in its precision);
        a runtime of its own (OpenVINO) overrides this, and may compute in `precision` by a hint."""
        from cnncomp.run.session import Session

        return Session(model, self.name, threads=threads, quiet=quiet, settings=settings, **options)


# Modules beside this one that register more runtimes (an OpenVINO module, say) go in `modules`.
RUNTIMES = Registry("runtime", Runtime, ("name", "help", "provider"), modules=("cnncomp.run.openvino",),
                    reserved=(AUTO,))
register_runtime = RUNTIMES.register  # class decorator
runtimes = RUNTIMES.all  # every registered runtime, by name


def runtime_choices() -> tuple[str, ...]:
    """What --runtime takes: every runtime, and `auto`."""
    return (*runtimes(), AUTO)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose(name: str, quiet: bool = False) -> Runtime:
    """The runtime named (`auto`: the best available, saying so when it falls back to the CPU)."""
    known = runtimes()
    if name == AUTO:
        ranked = sorted((r for r in known.values() if r.auto_rank is not None), key=lambda r: r.auto_rank)
        for runtime in ranked:
            if runtime.available():
                return runtime
        if not quiet:
            sys.stderr.write("note: no GPU provider in this onnxruntime; running on the CPU\n")
        return known["cpu"]
    if name not in known:
        raise CnnError(f"unknown provider '{name}'; choose one of {', '.join(runtime_choices())}")
    return known[name]


def open_session(model, runtime: str = "cpu", settings: dict | None = None, precision: str = "fp32",
                 quiet: bool = False, **options):
    """A session of `model` on the runtime named (`auto`: the best available); a runtime missing here is a
    CnnError saying what to install. `precision` is the model's: a runtime that computes by a precision
    hint (OpenVINO's bf16) takes it from there."""
    chosen = choose(runtime, quiet)
    if not chosen.available():
        raise CnnError(chosen.missing())
    return chosen.session(model, settings, precision, quiet=quiet, **options)


def runtime_options() -> tuple[Option, ...]:
    """The options every registered runtime declares."""
    return tuple(o for r in runtimes().values() for o in r.options)


# ---- ONNX Runtime's own providers --------------------------------------------------------------------

_GPU_HINT = "on a machine with an NVIDIA GPU"


@register_runtime
class CpuRuntime(Runtime):
    name = "cpu"
    help = "ONNX Runtime on the CPU"
    provider = "CPUExecutionProvider"


@register_runtime
class CudaRuntime(Runtime):
    name = "cuda"
    help = "ONNX Runtime's CUDA provider"
    provider = "CUDAExecutionProvider"
    fallbacks = ("CPUExecutionProvider",)
    auto_rank = 1
    install_hint = f"install cnncomp[gpu] (onnxruntime-gpu) {_GPU_HINT} and CUDA"


@register_runtime
class TensorRTRuntime(Runtime):
    name = "tensorrt"
    help = "ONNX Runtime's TensorRT provider"
    provider = "TensorrtExecutionProvider"
    fallbacks = ("CUDAExecutionProvider", "CPUExecutionProvider")
    auto_rank = 0
    install_hint = f"install cnncomp[gpu] (onnxruntime-gpu built with TensorRT) and TensorRT itself, {_GPU_HINT}"
    symmetric_int8 = True
    options = (
        Option("trt_fp16", None, False, "with --runtime tensorrt: let TensorRT use float16", ("compile", "verify"),
               action="store_true"),
        Option("trt_engine_cache", str, None, "with --runtime tensorrt: cache built engines in DIR (later runs "
               "skip the build)", ("compile", "verify"), metavar="DIR"),
    )

    def providers(self, settings: dict) -> list:
        from cnncomp.run.session import TensorRTOptions

        trt = settings.get("trt")
        if trt is None:
            trt = TensorRTOptions(fp16=bool(settings.get("trt_fp16")), engine_cache=settings.get("trt_engine_cache"))
        return [(self.provider, trt.as_provider_options()), *self.fallbacks]
