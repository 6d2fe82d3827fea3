"""Inference speed on the CPU: cnncomp's ONNX (-O1) against torch.onnx.export's ONNX and PyTorch eager.

Run by hand: `python tools/bench_runtime.py [--threads 2] [--runs 20] [--models resnet50,mobilenet_v2]
[--batches 1,8]`. Not a test.

For each network (the hand-written torchvision copies of tests/torchvision_models.py,
seeded weights) three contestants compute the same function on the same input:

- ours:   `cnncomp.compile(spec, opt_level=1, weights=state_dict)`, run by ONNX Runtime;
- theirs: `torch.onnx.export(model, dynamo=False, opset 17, dynamic batch)` of the eager
          model with the same weights, run by ONNX Runtime with the same session options;
- eager:  the PyTorch model itself, `torch.inference_mode()`, float32.

ONNX Runtime runs on the CPU provider with its default graph optimizations
(ORT_ENABLE_ALL) and --threads intra-op threads (0 = ORT's default); PyTorch uses
the same number of threads. Before timing, the three outputs are checked to agree.
Each timed round runs the contestants one after the other (in rotating order), so
background load drifts over all of them alike; the figure is the median over
--runs rounds after warm-up. Ratios are ours/theirs (goal <= 1.0 within noise).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torchvision_models as tvm  # noqa: E402
from bench_compile import machine  # noqa: E402

import cnncomp  # noqa: E402


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # ORT's default, said explicitly
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_network(name: str, batches: list[int], runs: int, threads: int, tmp: Path) -> list[dict]:
    model = tvm.BUILDERS[name](seed=0)
    ours_path, theirs_path = tmp / f"{name}.cnncomp.onnx", tmp / f"{name}.torch.onnx"
    cnncomp.compile(ROOT / "specs" / f"{name}.cnn", output=ours_path, opt_level=1, weights=model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation warning
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(theirs_path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    ours, theirs = session(ours_path, threads), session(theirs_path, threads)
    ours_in, theirs_in = ours.get_inputs()[0].name, theirs.get_inputs()[0].name
    rows = []
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
        xt = torch.from_numpy(x)

        def run_ours(x=x):
            return ours.run(None, {ours_in: x})[0]

        def run_theirs(x=x):
            return theirs.run(None, {theirs_in: x})[0]

        def run_eager(xt=xt):
            with torch.inference_mode():
                return model(xt).numpy()

        contestants = {"ours": run_ours, "theirs": run_theirs, "eager": run_eager}
        outs = {k: fn() for k, fn in contestants.items()}  # also the first warm-up
        scale = float(np.abs(outs["eager"]).max())
        for k in ("ours", "theirs"):
            err = float(np.abs(outs[k] - outs["eager"]).max())
            assert err <= 1e-4 * scale + 1e-5, f"{name} batch {batch}: {k} differs from eager by {err:.3g}"
        for _ in range(2):
            for fn in contestants.values():
                fn()
        times = {k: [] for k in contestants}
        order = list(contestants)
        for i in range(runs):
            for k in order[i % 3:] + order[:i % 3]:
                start = time.perf_counter()
                contestants[k]()
                times[k].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        spread = {k: (np.percentile(v, 25), np.percentile(v, 75)) for k, v in times.items()}
        rows.append({"network": name, "batch": batch, **{k: med[k] for k in med}, "spread": spread})
        print(f"{name:<13} batch {batch}: ours {med['ours'] * 1e3:7.1f} ms  theirs {med['theirs'] * 1e3:7.1f} ms  "
              f"eager {med['eager'] * 1e3:7.1f} ms  ours/theirs {med['ours'] / med['theirs']:.3f}  "
              f"ours/eager {med['ours'] / med['eager']:.3f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op and torch threads (0: ORT default; 2)")
    ap.add_argument("--runs", type=int, default=20, help="timed rounds per network and batch (default 20)")
    ap.add_argument("--models", default="resnet50,mobilenet_v2", help="comma-separated (default resnet50,mobilenet_v2)")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    print(f"ONNX Runtime: CPUExecutionProvider, ORT_ENABLE_ALL, intra-op threads "
          f"{args.threads or 'default'}; torch threads {torch.get_num_threads()}; {args.runs} timed rounds, medians\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += bench_network(name.strip(), [int(b) for b in args.batches.split(",")], args.runs, args.threads,
                                  Path(tmp))
    print("\n| network | batch | cnncomp ONNX (ms) | torch.onnx.export ONNX (ms) | PyTorch eager (ms) "
          "| ours/theirs | ours/eager |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['network']} | {r['batch']} | {r['ours'] * 1e3:.1f} | {r['theirs'] * 1e3:.1f} | "
              f"{r['eager'] * 1e3:.1f} | {r['ours'] / r['theirs']:.3f} | {r['ours'] / r['eager']:.3f} |")
    print("\ninterquartile ranges (ms):")
    for r in rows:
        print(f"  {r['network']} batch {r['batch']}: " + ", ".join(
            f"{k} {lo * 1e3:.1f}-{hi * 1e3:.1f}" for k, (lo, hi) in r["spread"].items()))


if __name__ == "__main__":
    main()
