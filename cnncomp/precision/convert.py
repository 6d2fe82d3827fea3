"""The precision registry: an emitted float32 model to its target precision (fp32 as is, fp16, int8).

A precision is one class with every fact about it, registered with `@register_precision`, as ops are
(ops/registry.py): its name and help (`--precision` takes its choices from PRECISIONS), its own options
(Option declarations: the job description adds them to compile, verify and deploy, and refuses them with
another precision), its converter, what -O3 --autotune times a layer in, how a check judges it
(element-wise tolerances, or the relative L2 budget --max-error), what it needs here, the share of the
budget -O3's rewrites get beside it, what it sets in a Triton config and a TensorRT build, the pass
warnings that concern it, and its --stats table.

Adding one (bf16, say) is one module in precision/ with a registered Precision subclass, listed in
the `modules` of PRECISIONS below, plus docs; tests/test_registries.py checks that it defines every facet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from cnncomp.errors import CnnError, UsageError
from cnncomp.ir.graph import LayerGraph
from cnncomp.log import Log, silent
from cnncomp.options import Option
from cnncomp.registry import Registry


@dataclass
class PrecisionRequest:
    """What a precision converter may use: its own options by name (keep_io_fp32, int8's calibration
    settings, ...), inputs to cast for a check, the provider to probe for missing kernels, and the
    tolerances given (a check's note says what it is judged by)."""

    settings: dict = field(default_factory=dict)
    inputs: dict | None = None
    probe_provider: str | None = None
    atol: object = None
    rtol: object = None
    compiled: object = None  # pipeline.Compiled: the reference graph and weights int8 measures against
    inputs_given: bool = False  # the user's inputs (--load-inputs): int8 checks on them, not on its held-out ones
    tensorrt: bool = False  # the model goes to TensorRT (int8: symmetric int8 activations, no zero points)
    runtime: str | None = None  # the runtime the model is converted for (None: the job's --runtime)
    # bench times every precision itself: int8 is converted as compile writes it (placement, islands), but stays
    # int8 where it is not faster than float32 (the not-faster rule is bench's table to show, not to apply)
    timed_by_caller: bool = False

    @property
    def keep_io_fp32(self) -> bool:
        return bool(self.settings.get("keep_io_fp32"))


@dataclass
class Converted:
    """A model in its target precision, the inputs cast to its input types, the graph that describes it
    (for per-layer checks), and notes for the check's report."""

    model: object
    inputs: dict | None
    graph: LayerGraph
    precision: str
    notes: list[str] = field(default_factory=list)
    details: object = None  # the converter's own report (int8: the sensitivity table of --stats)
    # outputs and reference -> {output: (ok, words)} for the outputs a task metric judges (int8's top1 ...)
    judge: Callable | None = None


class Precision:
    """One precision. FACETS are what every precision must define itself (the test checks it); the other
    attributes have defaults that suit a precision converted without data and checked by tolerances."""

    FACETS = ("name", "help", "convert", "for_timing", "tolerances", "triton_mode")
    name: str = ""
    help: str = ""
    options: tuple[Option, ...] = ()  # its own options (group "precision")
    tolerances: tuple[float, float] = (1e-4, 1e-3)  # the check's default (atol per unit of max|ref|, rtol)
    converts_model: bool = True  # it converts the ONNX model (so it cannot go with a text --emit)
    judged_by_budget: bool = False  # judged by the relative L2 error against --max-error instead
    calibrated: bool = False  # reads --calibration to convert (then an image folder serves it, not -O3)
    o3_budget_share: float = 1.0  # of --max-error, what -O3's rewrites get beside this precision
    triton_mode: str = "FP32"  # Triton's TensorRT accelerator precision_mode
    tensorrt_build: dict = {}  # flags for deployment.tensorrt.build_engine (fp16=True, int8=True)
    strict_load: bool = True  # a model ONNX Runtime's CPU provider cannot load is refused, not warned about
    requires: tuple[str, ...] = ()  # what it needs, in words (shown by `missing`)

    def convert(self, model, graph: LayerGraph, request: PrecisionRequest, log: Log = silent) -> Converted:
        raise NotImplementedError

    def for_timing(self) -> Callable | None:
        """What -O3 --autotune does to a layer's model before timing it (None: time it as emitted)."""
        return None

    def missing(self) -> list[str]:
        """What this machine lacks for this precision (CPU features, a GPU, packages), in words."""
        return []

    def conversion_key(self, model, request: PrecisionRequest):
        """Beyond the provider probed, what makes two requests convert `model` differently (bench converts once
        per key): nothing here; int8, the runtime's placement of its layers."""
        return None

    def pass_warnings(self, compiled) -> list[str]:
        """The passes' warnings that concern this precision (fp16: folded weights out of range)."""
        return []

    def stats(self, details) -> str | None:
        """Its part of --stats (int8: the per-layer sensitivity table), or None."""
        return None

    def check_notes(self, report, compiled, details=None) -> list[str]:
        """Notes a check adds about this precision with --per-layer (int8: each output's metric and why, where
        the error jumps); `details` is the converter's own report."""
        return []


# Modules beside this one that register more precisions (a bf16 module, say) go in `modules`.
PRECISIONS = Registry("precision", Precision, Precision.FACETS, modules=("cnncomp.precision.bf16",))
register_precision = PRECISIONS.register  # class decorator
precisions = PRECISIONS.all  # every registered precision, by name


def precision_of(name: str) -> Precision:
    if name not in precisions():
        raise UsageError(f"unknown precision '{name}'; known: {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def precision_options() -> tuple[Option, ...]:
    """The options every registered precision declares."""
    return tuple(o for p in precisions().values() for o in p.options)


@register_precision
class Fp32(Precision):
    name = "fp32"
    help = "float32, as emitted"
    converts_model = False
    tolerances = (1e-4, 1e-3)
    triton_mode = "FP32"

    def convert(self, model, graph, request, log=silent):
        return Converted(model, request.inputs, graph, "fp32")

    def for_timing(self):
        return None


@register_precision
class Fp16(Precision):
    """Weights and compute in float16 after the passes (precision/fp16.py)."""

    name = "fp16"
    help = "float16 weights and compute, converted after the passes"
    options = (Option("keep_io_fp32", None, False, "with --precision fp16: keep float32 inputs and outputs (Cast "
                      "nodes inside the model)", ("compile", "deploy"), action="store_true", group="precision"),)
    tolerances = (1e-2, 1e-2)
    triton_mode = "FP16"
    tensorrt_build = {"fp16": True}
    strict_load = False  # a float16 model may still run on a GPU provider

    def convert(self, model, graph, request, log=silent):
        from cnncomp.precision.fp16 import cast_feeds, fp16_graph, fp16_note, log_report, to_fp16

        converted, report = to_fp16(model, keep_io_fp32=request.keep_io_fp32, probe_provider=request.probe_provider)
        log_report(report, log)
        inputs = cast_feeds(converted, request.inputs) if request.inputs is not None else None
        return Converted(converted, inputs, fp16_graph(graph), "fp16", [fp16_note(request.atol, request.rtol)])

    def for_timing(self):
        from cnncomp.precision.fp16 import to_fp16

        return lambda model: to_fp16(model, keep_io_fp32=True)[0]

    def pass_warnings(self, compiled):
        return list(compiled.fp16_warnings)


def int8_runtime(request: PrecisionRequest) -> str:
    """Whose int8 kernels the QDQ placement is for (int8_support.PLACEMENT_RULES): TensorRT for a TensorRT build,
    OpenVINO when the check runs there, else ONNX Runtime's CPU provider."""
    if request.tensorrt:
        return "tensorrt"
    runtime = request.runtime or request.settings.get("runtime")
    return "openvino" if runtime == "openvino" else "onnxruntime-cpu"


def _metric_problem(value) -> str | None:
    from cnncomp.verification.metrics import metric_problem

    return metric_problem(value)


def _int8_option(name, kind, default, help, choices=None):
    return Option(name, kind, default, help, ("compile", "verify", "deploy"), choices=choices, group="precision")


@register_precision
class Int8(Precision):
    """Calibrated QDQ int8, the most sensitive layers kept in float32 within --max-error (precision/int8.py);
    checked on the calibration samples held out from calibration."""

    name = "int8"
    help = "calibrated QDQ int8 within --max-error"
    options = (
        _int8_option("preprocess", str, None, "with an image folder as --calibration: imagenet (resize 256, center "
                     "crop 224, ImageNet mean/std; the default), imagenet-keep (a dynamic model: each image at its own size, "
                     "aspect ratio kept, longer side at most 512, ImageNet mean/std) or unit (resize, scale to [0, 1])",
                     ("imagenet", "imagenet-keep", "unit")),
        _int8_option("calibration_method", str, None, "with --precision int8: how activation ranges are set from "
                     "the calibration data: minmax, percentile (the default), entropy, mse (per tensor, the "
                     "range that minimises its quantization error) or layer (per tensor, of min-max, percentile, mse and "
                     "clipped ranges the one that minimises the output error of the layers reading it)",
                     ("minmax", "percentile", "entropy", "mse", "layer")),
        _int8_option("weight_rounding", str, "nearest", "with --precision int8: nearest (the default), or gptq: "
                     "each int8 weight rounded up or down to minimise its layer's output error on the calibration "
                     "data", ("nearest", "gptq")),
        _int8_option("bias_correction", str, "auto", "with --precision int8: subtract the mean shift that rounding "
                     "the weights adds to each conv/linear output (auto: only where it lowers the error on "
                     "calibration samples; default)", ("auto", "on", "off")),
        Option("keep_slower_int8", None, False, "with --precision int8: keep int8 where it is not faster than "
               "float32 (ONNX Runtime CPU, one thread, timed at compile time): the whole model, quantized "
               "islands between float32 layers that save less than their QuantizeLinear/DequantizeLinear cost, "
               "and the layers the runtime's placement rules keep in float32 (squeeze-excite gates, 5x5 depthwise "
               "convs, convs before a hard-swish: docs/precision.md). "
               "Without it such a model is written in float32, and the report says so with both times",
               ("compile", "verify", "deploy"), action="store_true", group="precision"),
        Option("metric", str, "auto", "with --precision int8: what the budget judges each output by, "
               "[OUTPUT=]METRIC[<=T] comma-separated: rel-l2 (threshold --max-error), max-abs, top1 or topK "
               "(decisions changed, 0.01 = one point), iou(T), psnr (>= dB, default 40), accuracy (with --labels); "
               "auto: top1 for class scores (a linear or softmax head), rel-l2 for the others. E.g. top1<=0.02, "
               "logits=top1,boxes=rel-l2, mask=iou(0.5), psnr>=40; the API also takes fn(reference_outputs, "
               "outputs) -> float or (fn, threshold)", ("compile", "verify", "deploy"), check=_metric_problem,
               metavar="SPEC", group="precision"),
        _int8_option("labels", str, None, "with --precision int8: the true class of every --calibration sample (.npy "
                     "of integers, or .txt with one per line; the API also takes a sequence): the class-score output "
                     "is judged by the accuracy it loses on the held-out samples"),
    )
    tolerances = (1e-1, 1e-1)  # only fill the report: int8 is judged by the budget
    judged_by_budget = True
    calibrated = True
    o3_budget_share = 0.5  # quantization measures against the whole budget, -O3's rewrites get half
    triton_mode = "INT8"  # the QDQ model's own scales
    tensorrt_build = {"int8": True}

    def conversion_key(self, model, request: PrecisionRequest) -> frozenset:
        """The layer groups int8 keeps float32 for the runtime of `request` (int8_support.PLACEMENT_RULES): two
        requests with the same placement convert a model to the same int8 model."""
        from cnncomp.precision.int8 import layer_groups
        from cnncomp.precision.int8_support import slower_in_int8

        return frozenset(slower_in_int8(model, layer_groups(model), int8_runtime(request)))

    def convert(self, model, graph, request, log=silent):
        from cnncomp.precision.int8 import DEFAULT_METHOD, quantize_int8

        if request.compiled is None:
            raise ValueError("int8 needs the compiled graph's reference (PrecisionRequest.compiled)")
        o, c = request.settings, request.compiled
        max_error = o.get("max_error")
        quantized, report = quantize_int8(
            model, graph, c.ref_graph, c.ref_weights, o.get("calibration"), o.get("preprocess"),
            o.get("calibration_method") or DEFAULT_METHOD, max_error, bool(o.get("stats")), o.get("seed", 0),
            "int8" if request.tensorrt else "uint8", o.get("bias_correction", "auto"), o.get("jobs", 1),
            o.get("metric", "auto"), o.get("labels"),
            timed=not request.tensorrt,  # TensorRT runs it, not ONNX Runtime's CPU: CPU times say nothing there
            keep_slower=bool(o.get("keep_slower_int8")), weight_rounding=o.get("weight_rounding") or "nearest",
            runtime=int8_runtime(request))
        keeps_slower = o.get("keep_slower_int8") or request.timed_by_caller
        if (report.faster is False and not keeps_slower) or report.nothing_quantized:
            quantized, report.written = model, "fp32"  # the not-faster rule; or every layer ended in float32
        for w in report.warnings:
            log(f"warning: {w}\n")
        log(report.summary() + "\n")
        if not report.ok:
            missed = [m for m in report.metrics if not m.fits] or report.metrics
            if all(m.metric == "rel-l2" for m in missed):
                raise CnnError(f"int8: relative error {report.error:.3g} exceeds --max-error {max_error:g} even with "
                               "every layer in float32")
            raise CnnError("int8: even with every layer in float32 the budget is missed: " + "; ".join(
                f"{m.output}: {m.metric} {m.converted.text}, wanted {m.metric} {m.bound}" for m in missed))
        inputs = request.inputs if request.inputs_given else report.inputs
        # report.summary() was logged, notes included; the precision is what was written (fp32: not faster, judged
        # by float32's tolerances, not by int8's metrics)
        judge = report.judge if report.written == "int8" else None
        return Converted(quantized, inputs, graph, report.written, [], report, judge)

    def for_timing(self):
        from cnncomp.precision.int8 import quantized_for_timing

        return quantized_for_timing  # int8 kernels and float32 ones do not rank rewrites alike

    def stats(self, details):
        return details.table() if details is not None else None

    def check_notes(self, report, compiled, details=None):
        from cnncomp.precision.int8 import largest_error_jump

        notes = [f"int8 judges {line}" for line in (details.metric_choices if details is not None else [])]
        jump = largest_error_jump(report.layers) if report.layers else None
        if not jump:
            return notes
        return notes + [f"the int8 error jumps most at {jump[0]} ({compiled.ref_graph.layer(jump[0]).where}): "
                        f"relative L2 {jump[1]:.3g} before it, {jump[2]:.3g} after"]


def convert_precision(model, graph: LayerGraph, precision: str = "fp32", request: PrecisionRequest | None = None,
                      log: Log = silent) -> Converted:
    """The emitted float32 model converted to `precision` (one of PRECISIONS); a precision this machine lacks
    what it needs for (`missing`) is a CnnError saying what."""
    chosen = precision_of(precision)
    lacking = chosen.missing()
    if lacking:
        raise CnnError(f"--precision {precision} needs what this machine lacks: {'; '.join(lacking)}")
    return chosen.convert(model, graph, request or PrecisionRequest(), log)


def conversion_for_timing(precision: str):
    """What -O3 --autotune does to a layer's model before timing it: `precision`'s conversion, cheap and
    calibrated on seeded data, or None for a precision timed as emitted."""
    return precision_of(precision).for_timing()
