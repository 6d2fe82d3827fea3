"""Precision converters: an emitted float32 model to its target precision (fp32 as is, fp16, int8).

A converter is a function (model, graph, PrecisionRequest, log) -> Converted, listed in PRECISIONS;
`--precision` on compile, verify and deploy takes its choices from that table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from cnncomp.errors import CnnError, UsageError
from cnncomp.ir.graph import LayerGraph
from cnncomp.log import Log, silent


@dataclass
class PrecisionRequest:
    """What a precision converter may use: keep float32 I/O, inputs to cast for a check, the provider to
    probe for missing kernels, and the tolerances given (a check's note says what it is judged by)."""

    keep_io_fp32: bool = False
    inputs: dict | None = None
    probe_provider: str | None = None
    atol: object = None
    rtol: object = None
    int8: "Int8Options | None" = None
    compiled: object = None  # pipeline.Compiled: the reference graph and weights int8 measures against
    inputs_given: bool = False  # the user's inputs (--load-inputs): int8 checks on them, not on its held-out ones


@dataclass
class Int8Options:
    """How int8 calibrates: the data (a .npz/.npy path, an image folder or a dict; None: seeded, with a
    warning), the image preprocessing, the calibration method, the error budget on held-out samples, whether
    to measure every layer's sensitivity (--stats), the seed, the activation type (int8 for TensorRT,
    which takes no zero point; else uint8) and the bias correction (auto, on, off)."""

    calibration: object = None
    preprocess: str | None = None
    method: str | None = None
    max_error: float | None = None
    sensitivity: bool = False
    seed: int = 0
    activations: str = "uint8"
    bias_correction: str = "auto"  # auto (where it lowers the error on calibration samples), on, off
    jobs: int = 1  # processes measuring the sensitivity search's layers


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


def keep_fp32(model, graph: LayerGraph, request: PrecisionRequest, log: Log = silent) -> Converted:
    """fp32: the model as emitted."""
    return Converted(model, request.inputs, graph, "fp32")


def convert_fp16(model, graph: LayerGraph, request: PrecisionRequest, log: Log = silent) -> Converted:
    """fp16: weights and compute in float16 after the passes (see precision/fp16.py)."""
    from cnncomp.precision.fp16 import cast_feeds, fp16_graph, fp16_note, log_report, to_fp16

    converted, report = to_fp16(model, keep_io_fp32=request.keep_io_fp32, probe_provider=request.probe_provider)
    log_report(report, log)
    inputs = cast_feeds(converted, request.inputs) if request.inputs is not None else None
    return Converted(converted, inputs, fp16_graph(graph), "fp16", [fp16_note(request.atol, request.rtol)])


def convert_int8(model, graph: LayerGraph, request: PrecisionRequest, log: Log = silent) -> Converted:
    """int8: calibrated QDQ int8, the most sensitive layers kept in float32 within the budget
    (see precision/int8.py); checked on the calibration samples held out from calibration."""
    from cnncomp.precision.int8 import DEFAULT_METHOD, quantize_int8

    if request.compiled is None:
        raise ValueError("int8 needs the compiled graph's reference (PrecisionRequest.compiled)")
    o, c = request.int8 or Int8Options(), request.compiled
    quantized, report = quantize_int8(model, graph, c.ref_graph, c.ref_weights, o.calibration, o.preprocess,
                                      o.method or DEFAULT_METHOD, o.max_error, o.sensitivity, o.seed, o.activations,
                                      o.bias_correction, o.jobs)
    for w in report.warnings:
        log(f"warning: {w}\n")
    log(report.summary() + "\n")
    if not report.ok:
        raise CnnError(f"int8: relative error {report.error:.3g} exceeds --max-error {o.max_error:g} even with "
                       "every layer in float32")
    inputs = request.inputs if request.inputs_given else report.inputs
    return Converted(quantized, inputs, graph, "int8", [], report)  # report.summary() was logged, notes included


# A precision is a converter (model, graph, PrecisionRequest, log) -> Converted.
PRECISIONS: dict[str, Callable[..., Converted]] = {"fp32": keep_fp32, "fp16": convert_fp16, "int8": convert_int8}


def convert_precision(model, graph: LayerGraph, precision: str = "fp32", request: PrecisionRequest | None = None,
                      log: Log = silent) -> Converted:
    """The emitted float32 model converted to `precision` (one of PRECISIONS)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'; known: {', '.join(PRECISIONS)}")
    return PRECISIONS[precision](model, graph, request or PrecisionRequest(), log)


def conversion_for_timing(precision: str):
    """What -O3 --autotune does to a layer's model before timing it: `precision`'s conversion, cheap and
    calibrated on seeded data (int8 kernels and float32 ones do not rank rewrites alike), or None for fp32."""
    if precision == "int8":
        from cnncomp.precision.int8 import quantized_for_timing

        return quantized_for_timing
    if precision == "fp16":
        from cnncomp.precision.fp16 import to_fp16

        return lambda model: to_fp16(model, keep_io_fp32=True)[0]
    return None
