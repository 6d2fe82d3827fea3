"""OpenVINO as a runtime: the same ONNX file ONNX Runtime runs, read and compiled by OpenVINO on the CPU.

OpenVINO's CPU plugin picks its own inference precision unless told: on a CPU
with AVX-512 BF16 or AMX it computes a float32 model in bfloat16 (about 0.3%
relative L2 error on ResNet-50). So the precision hint is always set here:
`f32` for fp32 (what "fp32" means everywhere else in cnncomp), `bf16` only when
bf16 is asked for, `f16` for fp16 (on a CPU without float16 math, `f32`: the
float16 model then runs computed in float32). An int8 (QDQ) model runs its quantized layers
in int8 whatever the hint; its float layers follow the hint (f32).

Settings for latency at batch 1, what `benchmark_app -hint latency -nthreads N` asks for: PERFORMANCE_HINT
LATENCY (one stream), INFERENCE_NUM_THREADS from --threads, and a model with dynamic dims (cnncomp emits the
batch dynamic) compiled for the static shapes it is run on (see `OpenVinoSession._use`). CPU pinning and
NUM_STREAMS 1 changed nothing measurable on MobileNetV2 (docs/benchmarks.md), so they are left to OpenVINO.

Why OpenVINO's own runtime and not ONNX Runtime's OpenVINO execution provider
(the `onnxruntime-ep-openvino` plugin, 1.8.1): the plugin bundles a second copy
of OpenVINO, ignores its `precision` provider option (asked for FP32 it computed
ResNet-50 in bf16 on an AMX CPU: relative L2 error 0.0029 against ONNX Runtime's
float32; the hint must go through a JSON load_config), and enumerated no device
on an AMD EPYC where it was tried (it does on Intel Xeons); `openvino` reads the
ONNX file directly, on any x86 CPU, and takes the hint as a property.

Without the package, opening a session is a CnnError that says
`pip install 'cnncomp[openvino]'`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from cnncomp.errors import CnnError
from cnncomp.run.runtime import Runtime, register_runtime

INSTALL_HINT = "pip install 'cnncomp[openvino]'"
# cnncomp precision -> (INFERENCE_PRECISION_HINT, the hint where the CPU lacks that math, or None: refused).
# Other precisions (int8: its QDQ layers run in int8 whatever the hint) compute their float layers in f32.
PRECISION_HINTS = {"fp32": ("f32", None), "fp16": ("f16", "f32"), "bf16": ("bf16", None)}
MAX_COMPILED_SHAPES = 4  # a dynamic model's compiled static versions kept at once (each holds its weights)
CAPABILITY = {"bf16": "BF16", "f16": "FP16"}  # what OPTIMIZATION_CAPABILITIES lists for a hint's math


def openvino_problem() -> str | None:
    """Why OpenVINO cannot run here (the package is missing or broken), or None."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return f"the openvino package is not installed ({INSTALL_HINT})"
    except Exception as e:  # a broken install raises its own errors (missing shared libraries)
        return f"the openvino package does not load ({e}); reinstall it ({INSTALL_HINT})"
    return None


def _core():
    problem = openvino_problem()
    if problem:
        raise CnnError(f"the openvino runtime cannot run: {problem}")
    import openvino as ov

    return ov.Core()


def cpu_capabilities() -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU (e.g. FP32, BF16, INT8), or [] without OpenVINO."""
    if openvino_problem():
        return []
    return list(_capabilities())


@functools.lru_cache(maxsize=1)
def _capabilities() -> tuple[str, ...]:  # asked once: a Core takes a while to start
    return tuple(str(c) for c in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def precision_problem(hint: str) -> str | None:
    """Why OpenVINO on this CPU cannot compute by the precision hint `hint` (f32, f16, bf16), or None."""
    problem = openvino_problem()
    if problem:
        return problem
    if hint in CAPABILITY and CAPABILITY[hint] not in cpu_capabilities():
        return (f"OpenVINO finds no {CAPABILITY[hint]} support on this CPU (its OPTIMIZATION_CAPABILITIES "
                f"are {', '.join(cpu_capabilities())})")
    return None


def _read(core, model):
    """An ov.Model from a path, ONNX bytes or an onnx.ModelProto."""
    if isinstance(model, (str, Path)):
        return core.read_model(str(model))
    if not isinstance(model, bytes):
        model = model.SerializeToString()
    return core.read_model(model)


def _onnx_name(port) -> str:
    names = sorted(port.get_names())
    return port.get_any_name() if len(names) != 1 else names[0]


class OpenVinoSession:
    """An ONNX model compiled by OpenVINO for the CPU, with an explicit inference precision; runs on numpy
    inputs and returns outputs by their ONNX names (the interface of run.session.Session)."""

    def __init__(self, model, precision: str = "fp32", threads: int = 0):
        core = _core()
        hint, fallback = PRECISION_HINTS.get(precision, ("f32", None))
        problem = precision_problem(hint)
        if problem and fallback is None:
            raise CnnError(f"the openvino runtime cannot compute {precision} here: {problem}")
        if problem:
            hint = fallback  # a float16 model still runs, computed in float32, where the CPU has no float16 math
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            read = _read(core, model)
        except Exception as e:  # OpenVINO raises RuntimeError with its own message for unsupported models
            raise CnnError(f"OpenVINO could not load the model: {e}") from None
        self._core, self._model, self.config = core, read, config
        # compiled models by the input shapes they were compiled for (None: as read, dynamic dims and all)
        self._by_shapes: dict[tuple | None, tuple] = {}
        # the ONNX names, as read: compiling may merge a tensor's names, and get_any_name() of a compiled
        # output can then answer the name of the layer before it (ResNet-50's `fc` for `logits`)
        self._inputs = [_onnx_name(p) for p in read.inputs]
        self._outputs = [_onnx_name(p) for p in read.outputs]
        self.provider = "openvino"
        self.precision = precision
        self.compiled = self.request = None  # the compiled model and request of the latest run
        self._dynamic = read.is_dynamic()
        if not self._dynamic:
            self._use(None)

    def _compile(self, shapes: tuple | None):
        """The model compiled for these input shapes (reshaped to them first), or as read for None."""
        model = self._model
        if shapes is not None:
            model = self._model.clone()
            model.reshape({port: list(shape) for port, shape in zip(model.inputs, shapes)})
        return self._core.compile_model(model, "CPU", self.config)

    def _use(self, shapes: tuple | None) -> None:
        """Make the model compiled for `shapes` the current one, compiling it on first use.

        A model with dynamic dims (the batch, as cnncomp emits it) is compiled for the static shapes of the
        inputs it is run on: on dynamic shapes OpenVINO's CPU plugin infers every node's shape on every
        inference and picks shape-agnostic kernels, and MobileNetV2 in int8 at batch 1 took 7% to 12% more
        CPU time so (2.80 against 3.12 ms and 2.55 against 2.87 ms in two loaded runs of
        tools/bench_openvino_int8.py; ResNet-50 8%). A shape it cannot be reshaped to runs on
        the dynamic model. The last few shapes stay compiled."""
        if shapes not in self._by_shapes:
            try:
                try:
                    compiled = self._compile(shapes)
                except Exception:  # noqa: BLE001 - a reshape OpenVINO refuses: the dynamic model serves
                    if shapes is None:
                        raise
                    compiled = self._by_shapes[None][0] if None in self._by_shapes else self._compile(None)
            except Exception as e:  # OpenVINO raises RuntimeError with its own message for unsupported models
                raise CnnError(f"OpenVINO could not load the model: {e}") from None
            if len(self._by_shapes) >= MAX_COMPILED_SHAPES:
                del self._by_shapes[next(iter(self._by_shapes))]
            self._by_shapes[shapes] = (compiled, compiled.create_infer_request())
        self.compiled, self.request = self._by_shapes[shapes]

    @property
    def inference_precision(self) -> str:
        """The precision OpenVINO computes the float layers in (f32, bf16, f16), as compiled."""
        if self.compiled is None:
            self._use(None)
        chosen = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        return chosen.get_type_name() if hasattr(chosen, "get_type_name") else str(chosen)

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model; return {output name: array} (copies: the request reuses its buffers)."""
        names = outputs or self.output_names
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise CnnError(f"missing inputs: {', '.join(missing)} (the model takes {', '.join(self.input_names)})")
        unknown = [n for n in names if n not in self._outputs]
        if unknown:
            raise CnnError(f"the model has no output {', '.join(unknown)} (it has {', '.join(self._outputs)})")
        if self._dynamic:
            self._use(tuple(np.shape(feeds[n]) for n in self._inputs))
        try:
            # shared, not copied: the request reads the caller's arrays and its outputs are copied once below.
            # Copying a 3x224x224 input and every output into fresh arrays cost ~0.15 ms of MobileNetV2's
            # ~2.6 ms in int8, about 6% (tools/bench_openvino_int8.py)
            self.request.infer({i: feeds[n] for i, n in enumerate(self._inputs)}, share_inputs=True,
                               share_outputs=True)
        except Exception as e:
            raise CnnError(f"OpenVINO failed to run the model: {e}") from None
        return {n: np.array(self.request.get_output_tensor(self._outputs.index(n)).data, copy=True) for n in names}

    def median_seconds(self, feeds: dict[str, np.ndarray], repeats: int = 20, warmup: int = 3) -> float:
        """Median wall time of one run on these inputs, after some warm-up runs."""
        from cnncomp.run.timing import median_run_seconds

        return median_run_seconds(self, feeds, repeats, warmup)


@register_runtime
class OpenVinoRuntime(Runtime):
    """OpenVINO's own runtime on the CPU (not an ONNX Runtime provider): `--runtime openvino`."""

    name = "openvino"
    help = "OpenVINO on the CPU (the openvino package; bf16 by its precision hint)"
    provider = "OpenVINOExecutionProvider"  # its ONNX Runtime counterpart; cnncomp runs OpenVINO's own runtime
    install_hint = INSTALL_HINT
    triton_cpu_accelerator = "openvino"  # Triton's onnxruntime backend runs CPU instances through OpenVINO

    def available(self) -> bool:
        return openvino_problem() is None

    def missing(self) -> str:
        return f"the openvino runtime cannot run: {openvino_problem()}"

    def providers(self, settings: dict) -> list:
        """ONNX Runtime's CPU provider stands in where a step asks ONNX Runtime itself which kernels exist
        (fp16's probe of the nodes to keep in float32); sessions are OpenVINO's own (`session`)."""
        return ["CPUExecutionProvider"]

    def session(self, model, settings: dict | None = None, precision: str = "fp32", threads: int = 0,
                quiet: bool = False, **options):
        return OpenVinoSession(model, precision, threads)
