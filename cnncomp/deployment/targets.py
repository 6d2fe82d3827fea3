"""The target registry: what a compiled model is written as (an ONNX file, a TensorRT engine, a Triton
model repository).

A target is one class: its name, a one-line help, what it writes (`writes`), whether `compile
--target` takes it (a Triton repository is written by `deploy`, which also names its folder), and
`write`. The precision's facts that a target needs (its TensorRT build flags, its Triton precision
mode, whether a model ONNX Runtime cannot load is refused) come from the precision registry.

Adding one is one module in deployment/ with a `@register_target` class, listed in the `modules` of TARGETS,
plus docs; `--target` takes it from then on.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnncomp.log import Log, silent
from cnncomp.registry import Registry



@dataclass
class Written:
    """A file written: its path, what it holds (onnx, tensorrt, cnn, dot, torch) and, for an engine, its size."""

    path: str
    kind: str
    size: int | None = None


class Target:
    name: str = ""
    help: str = ""
    writes: str = ""  # what it writes, in words
    compile_target: bool = True  # `compile --target NAME` writes it
    from_onnx: bool = False  # it is built from the ONNX model (so it cannot go with a text --emit)
    tensorrt: bool = False  # TensorRT consumes it (int8 then takes symmetric activations, no zero points)

    def settings(self, model, output) -> dict:
        """What `write` needs beyond the model, from the job's output settings (a TensorRT profile)."""
        return {}

    def write(self, model, output, precision, log: Log = silent, **settings) -> Written:
        """Write `model` (in `precision`, a precision.convert.Precision) to `output`."""
        raise NotImplementedError


# Modules beside this one that register more targets go in `modules`.
TARGETS = Registry("target", Target, ("name", "help", "writes", "write"), modules=())
register_target = TARGETS.register  # class decorator
targets = TARGETS.all  # every registered target, by name


def compile_targets() -> dict[str, Target]:
    """The targets `compile --target` takes."""
    return {name: t for name, t in targets().items() if t.compile_target}


@register_target
class OnnxFile(Target):
    name = "onnx"
    help = "an ONNX model file"
    writes = "OUT (.onnx), with OUT.data beside it past 2 GB"

    def write(self, model, output, precision, log=silent, **settings):
        from cnncomp.emit.onnx import save_onnx
        from cnncomp.run.session import refuse_unloadable

        # a model ONNX Runtime's CPU provider cannot load is refused, unless its precision may still run
        # on a GPU provider (float16): then a warning
        refuse_unloadable(model, output, strict=precision.strict_load, warn=log)
        save_onnx(model, output)
        return Written(str(output), "onnx")


@register_target
class TensorRTEngine(Target):
    name = "tensorrt"
    help = "a serialized TensorRT engine; needs tensorrt and an NVIDIA GPU"
    writes = "OUT (.plan), one optimization profile over the batch dim (--min-batch/--opt-batch/--max-batch)"
    from_onnx = True
    tensorrt = True

    def settings(self, model, output):
        from cnncomp.deployment.tensorrt import engine_profile

        return {"profile": engine_profile(model, output.min_batch, output.opt_batch, output.max_batch)}

    def write(self, model, output, precision, log=silent, profile=None, **settings):
        from cnncomp.deployment.tensorrt import write_engine

        size = write_engine(model, profile, output, log=lambda line: log(f"note: {line}\n"),
                            **precision.tensorrt_build)
        return Written(str(output), "tensorrt", size)


@register_target
class TritonRepository(Target):
    name = "triton"
    help = "a Triton Inference Server model repository"
    writes = "REPO/<name>/config.pbtxt and REPO/<name>/1/model.onnx, atomically"
    compile_target = False  # `cnncomp deploy --triton REPO`
    from_onnx = True

    def write(self, model, output, precision, log=silent, config=None, **settings):
        from cnncomp.deployment.triton import write_repository
        from cnncomp.errors import CnnError

        try:
            folder = write_repository(model, config, output)
        except OSError as e:
            raise CnnError(f"cannot write the model repository '{output}': {e}") from None
        return Written(str(folder), "triton")
