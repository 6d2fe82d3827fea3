"""How long int8 quantization of ResNet-50 takes with every method on, against ONNX Runtime's and NNCF's.

Run by hand: `python tools/bench_int8_time.py [--spec specs/resnet50.cnn] [--samples 16] [--skip-nncf] [--profile N]
[--jobs N]`.
On the same float32 -O1 model (seeded weights) and the same seeded calibration samples (as a cal.npz of
16 samples would be; cnncomp holds the last quarter out to measure its error, the others calibrate on all):

  cnncomp all       quantize_int8 with --calibration-method mse, --weight-rounding gptq, bias correction on
                    and the sensitivity search (--stats: every layer quantized alone and measured), max_error 0.01
  cnncomp default   quantize_int8 at its defaults (percentile, nearest, bias correction auto, no --stats)
  ORT               onnxruntime.quantization.quantize_static with its defaults (QDQ, min-max)
  NNCF              nncf.quantize on the ONNX model (its default: min-max with fast bias correction), where
                    NNCF is installed (it is not a cnncomp dependency)

Wall-clock seconds of each call, one after the other in one run, and their ratios to ORT's and NNCF's
(the machine may be shared: say so beside the figures; the load average is printed), with cnncomp's held-out
relative L2 error and budget error. The goal (the developers' guide, docs/precision.md): every method on within
30 s on this machine; the last line says whether it is met, and the ratio to quantize_static's time in the same
run (the guide's 30 s was 2.3x its 13 s; on the 2-core machine of 2026-12 quantize_static takes 2-3 s, so the
ratio is printed, not judged). Imports are not timed (torch, NNCF: each tool's modules are loaded before its
call). cnncomp's layer timings (int8_speed.py) are cached between runs: the bench gives them a fresh cache, so
each run pays what a first compile pays. With `--profile N`, the every-method call runs under cProfile and its N
largest parts by cumulative time are printed after it (the profiler adds about a tenth).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
BUDGET_SECONDS = 30.0  # every method on, ResNet-50, this machine (the developers' guide)
sys.path.insert(0, str(ROOT))

from cnncomp.pipeline import emit_model, optimize  # noqa: E402
from cnncomp.precision.calibration import seeded_calibration  # noqa: E402
from cnncomp.precision.int8 import FeedReader, quantize_int8, quiet_quantizer  # noqa: E402


def timed(label: str, call, profile: int = 0) -> float:
    """Wall-clock seconds of `call()`, printed; with `profile`, under cProfile, its largest parts printed after."""
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
    print(f"{label:<18} {seconds:7.1f} s", flush=True)
    if profiler is not None:
        print_parts(profiler, profile)
    return seconds


def print_parts(profiler, count: int) -> None:
    """The `count` functions of cnncomp and ONNX Runtime (and ONNX Runtime's native calls) with the largest
    cumulative time: where an every-method run's seconds go."""
    import pstats

    stats = pstats.Stats(profiler).stats
    rows = [(entry[3], entry[0], name) for name, entry in stats.items()
            if "cnncomp" in name[0] or "onnxruntime" in name[0] or "onnxruntime" in name[2] or "torch._C" in name[2]]
    for cumulative, calls, (path, line, function) in sorted(rows, reverse=True)[:count]:
        where = f"{Path(path).name}:{line}" if line else ""
        print(f"  {cumulative:7.2f} s {calls:6d} calls  {function} {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "specs" / "resnet50.cnn"))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--skip-nncf", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="the every-method call's sensitivity search in N processes (cnncomp's --jobs)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile the every-method call and print its N largest parts")
    args = parser.parse_args()
    importlib.import_module("torch")  # loaded before any call is timed, as NNCF is: imports are not quantization

    compiled = optimize(args.spec)
    model = emit_model(compiled)
    calibration = seeded_calibration(compiled.ref_graph, 0, args.samples)
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {Path(args.spec).name}, "
          f"{args.samples} seeded samples, load average {os.getloadavg()[0]:.1f}")
    results = {}
    os.environ["CNNCOMP_CACHE_DIR"] = tempfile.mkdtemp(prefix="cnncomp-bench-cache-")  # no timings from before

    def cnncomp_int8(**options):
        _, report = quantize_int8(model, compiled.graph, compiled.ref_graph, compiled.ref_weights, calibration,
                                  **options)
        print(f"  held-out relative L2 {report.error:.4g}, budget error {report.budget_error:.3g} "
              f"(full int8 {report.full_int8_error:.4g}), {len(report.float_layers)} layers kept in float32")

    results["cnncomp all"] = timed("cnncomp all", lambda: cnncomp_int8(
        method="mse", weight_rounding="gptq", bias_correction="on", sensitivity=True, max_error=0.01,
        jobs=args.jobs),
        args.profile)
    results["cnncomp default"] = timed("cnncomp default", lambda: cnncomp_int8())

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fp32.onnx"
        onnx.save(model, str(src))

        def ort():
            from onnxruntime.quantization import quantize_static

            with quiet_quantizer():
                quantize_static(str(src), str(Path(tmp) / "ort.onnx"), FeedReader(calibration))

        results["ORT"] = timed("ORT quantize_static", ort)

    if not args.skip_nncf:
        try:
            import nncf
        except ImportError:
            print("NNCF: not installed (pip install nncf)")
        else:
            name = model.graph.input[0].name
            samples = [{name: calibration[name][i:i + 1]} for i in range(args.samples)]

            def run_nncf():
                with quiet_quantizer():
                    nncf.quantize(model, nncf.Dataset(samples), subset_size=args.samples)

            results["NNCF"] = timed("NNCF quantize", run_nncf)
    for ours in ("cnncomp all", "cnncomp default"):
        ratios = [f"{results[ours] / results[other]:.2f}x {other}'s time" for other in ("ORT", "NNCF")
                  if other in results]
        print(f"{ours}: {results[ours]:.1f} s = " + ", ".join(ratios))
    seconds = results["cnncomp all"]
    print(f"goal: every method on within {BUDGET_SECONDS:.0f} s: {seconds:.1f} s, "
          f"{'met' if seconds <= BUDGET_SECONDS else 'NOT met'} ({seconds / results['ORT']:.2f}x quantize_static's "
          f"time; load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
