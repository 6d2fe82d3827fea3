"""Int8 benchmark: float32 -O1 against ONNX Runtime's quantize_static default and cnncomp's int8, side by side.

Run by hand: `python tools/bench_quant.py [--specs resnet50,mobilenet_v2,vgg16] [--batches 1,8]
[--threads 1,2] [--rounds 5] [--o3]`, or `python tools/bench_quant.py --trained [NET,...]` for real trained
networks with their task metrics against quantize_static and NNCF (tools/bench_quant_trained.py says what it
measures; tests/trained_nets.py lists the networks).

Seeded mode: For each network, on the same seeded weights and the same
calibration samples (8 seeded uniform images; 4 more held out for the error):

  fp32 -O1          cnncomp's float32 model (the baseline of the ratios)
  ort default       onnxruntime.quantization.quantize_static on that float32 model with its defaults
                    (QDQ, per-tensor QInt8 weights and activations, min-max)
  cnncomp int8      cnncomp's int8 (per-channel symmetric weights, uint8 activations, the default
                    calibration method), full int8: no layer kept in float32
  cnncomp int8 -O3  the same after -O3's rewrites (with --o3; with --autotune, only rewrites that ONNX Runtime
                    measures faster in int8 are kept)

Latency: ONNX Runtime CPU, median of `--repeats` runs per round, rounds interleaved across the
models, the median over rounds reported (the machine may be shared: interleaving keeps the ratios
fair). Error: relative L2 of the outputs against the float64 reference of the unoptimized graph on
the held-out samples.
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

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnncomp.pipeline import emit_model, optimize  # noqa: E402
from cnncomp.precision.calibration import seeded_calibration  # noqa: E402
from cnncomp.precision.int8 import DEFAULT_METHOD, FeedReader, quantize_int8, quiet_quantizer  # noqa: E402
from cnncomp.run.reference import run_reference  # noqa: E402
from cnncomp.run.session import Session  # noqa: E402
from cnncomp.verification.compare import relative_output_error  # noqa: E402


def ort_default(model: onnx.ModelProto, calibration: dict) -> onnx.ModelProto:
    """quantize_static with every option at its default."""
    from onnxruntime.quantization import quantize_static

    with tempfile.TemporaryDirectory() as tmp, quiet_quantizer():
        src, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        quantize_static(str(src), str(out), FeedReader(calibration))
        return onnx.load(str(out))


def build(spec: str, method: str, o3: bool,
          autotune: bool = False) -> tuple[list[tuple[str, onnx.ModelProto]], dict, dict]:
    """The models to compare, the held-out inputs and their float64 reference outputs."""
    compiled = optimize(spec)
    model = emit_model(compiled)
    samples = seeded_calibration(compiled.ref_graph, 0, 12)
    calibration = {k: v[:8] for k, v in samples.items()}
    held = {k: v[8:] for k, v in samples.items()}
    reference = run_reference(compiled.ref_graph, compiled.ref_weights, held, dtype=torch.float64)
    start = time.perf_counter()
    int8, _ = quantize_int8(model, compiled.graph, compiled.ref_graph, compiled.ref_weights, calibration,
                            method=method)
    print(f"  {Path(spec).stem}: cnncomp int8 in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    models = [("fp32 -O1", model), ("ort default", ort_default(model, calibration)), ("cnncomp int8", int8)]
    if o3:
        start = time.perf_counter()
        fast = optimize(spec, opt_level=3, calibration=held, autotune=autotune, timing_precision="int8")
        fast_model = emit_model(fast)
        o3_int8, _ = quantize_int8(fast_model, fast.graph, fast.ref_graph, fast.ref_weights, calibration,
                                   method=method)
        print(f"  {Path(spec).stem}: -O3 + int8 in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        models.append(("cnncomp int8 -O3", o3_int8))
    return models, held, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", default="resnet50,mobilenet_v2,vgg16")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--method", default=DEFAULT_METHOD)
    parser.add_argument("--o3", action="store_true", help="also cnncomp int8 after -O3 (slow)")
    parser.add_argument("--autotune", action="store_true", help="with --o3: -O3 keeps only rewrites measured faster in int8")
    parser.add_argument("--trained", nargs="?", const="all", metavar="NETS",
                        help="real trained networks instead of the seeded specs (all, or a comma list of "
                             "tests/trained_nets.py's NETS); --rounds and --repeats apply")
    args = parser.parse_args()
    if args.trained:
        from bench_quant_trained import main as trained

        trained(args.trained, args.rounds, args.repeats)
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, onnxruntime "
          f"{__import__('onnxruntime').__version__}, calibration {args.method}")
    print(f"{'network':<14} {'batch':>5} {'thr':>3} {'model':<17} {'ms':>9} {'speedup':>8} {'rel L2 err':>10} "
          f"{'top-1 agree':>11}")
    for name in args.specs.split(","):
        models, held, reference = build(str(ROOT / "specs" / f"{name}.cnn"), args.method, args.o3, args.autotune)
        errors, agree = {}, {}
        for label, model in models:
            got = Session(model, quiet=True).run(held)
            errors[label] = relative_output_error(got, reference)
            out = next(iter(reference))
            agree[label] = float(np.mean(got[out].argmax(1) == reference[out].argmax(1)))
        for batch in (int(b) for b in args.batches.split(",")):
            feeds = {k: np.repeat(v[:1], batch, axis=0) for k, v in held.items()}
            for threads in (int(t) for t in args.threads.split(",")):
                sessions = [(label, Session(model, quiet=True, threads=threads, spinning=False))
                            for label, model in models]
                times: dict[str, list[float]] = {label: [] for label, _ in sessions}
                for _ in range(args.rounds):
                    for label, session in sessions:
                        times[label].append(session.median_seconds(feeds, args.repeats, warmup=2))
                base = float(np.median(times["fp32 -O1"]))
                for label, _ in sessions:
                    ms = float(np.median(times[label]))
                    print(f"{name:<14} {batch:>5} {threads:>3} {label:<17} {ms * 1e3:>9.2f} {base / ms:>7.2f}x "
                          f"{errors[label]:>10.4f} {agree[label]:>10.0%}", flush=True)


if __name__ == "__main__":
    main()
