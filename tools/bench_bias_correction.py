"""Int8 bias correction: held-out error of cnncomp's full int8 with it off, on, and auto (the default).

Run by hand: `python tools/bench_bias_correction.py [--specs resnet18,resnet50,mobilenet_v2,vgg16]
[--samples 32] [--seed 0]`. Per network: seeded weights, `--samples` seeded uniform inputs (the last quarter
held out, as `--calibration` does), full int8 (no layer kept in float32), the default calibration method.
Prints the relative L2 error of the outputs against the float64 reference on the held-out samples for each
mode, the ratio on/off, and what auto decided (it decides on calibration samples, not the held-out ones).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnncomp.pipeline import emit_model, optimize  # noqa: E402
from cnncomp.precision.calibration import seeded_calibration  # noqa: E402
from cnncomp.precision.int8 import quantize_int8  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", default="resnet18,resnet50,mobilenet_v2,vgg16")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, seeded weights (seed "
          f"{args.seed}), {args.samples} seeded samples ({args.samples - args.samples // 4} calibrate, "
          f"{args.samples // 4} held out)")
    print(f"{'network':<14} {'off':>8} {'on':>8} {'on/off':>7} {'auto':>8}  auto decided")
    for name in args.specs.split(","):
        compiled = optimize(str(ROOT / "specs" / f"{name}.cnn"), seed=args.seed)
        model = emit_model(compiled)
        samples = seeded_calibration(compiled.ref_graph, args.seed + 1, args.samples)
        errors, decided = {}, ""
        start = time.perf_counter()
        for mode in ("off", "on", "auto"):
            _, report = quantize_int8(model, compiled.graph, compiled.ref_graph, compiled.ref_weights, samples,
                                      bias_correction=mode)
            errors[mode] = report.error
            if mode == "auto":
                decided = next((n for n in report.notes if "bias correction" in n), "")
        print(f"{name:<14} {errors['off']:>8.4g} {errors['on']:>8.4g} {errors['on'] / errors['off']:>7.3f} "
              f"{errors['auto']:>8.4g}  {decided.removeprefix('int8: ')} ({time.perf_counter() - start:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
