"""Compile speed: `cnncomp.compile` of specs/resnet50.cnn against `torch.onnx.export` of the same network.

Run by hand: `python tools/bench_compile.py [--runs 7]`. Not a test.

Both sides produce the same artifact: an ONNX file (opset 17, dynamic batch) of
torchvision's resnet50 with the same weights. cnncomp reads the spec and a
.safetensors weights file (written from the hand-written torchvision copy in
tests/torchvision_models.py), runs -O1 and writes the model; torch's TorchScript
exporter (`dynamo=False`) traces the in-memory eager model and writes its model
(its default constant folding folds the batch norms too). Each timing is the
median of --runs runs after one warm-up run in the same process, so neither
side pays its imports or first-call setup. Goal: cnncomp >= 5x faster (aim 10x).

Also prints where cnncomp's time goes (load and passes, ONNX emission, the ONNX
checker and shape inference, serialization and write).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
import torchvision_models as tvm  # noqa: E402

import cnncomp  # noqa: E402


def machine() -> str:
    """CPU model, cores, library versions and date, for the record."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import onnx
    import onnxruntime

    try:
        load = "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "load average unknown"
    return (f"machine: {cpu}, {os.cpu_count()} logical cores ({usable} usable), {platform.system()} "
            f"{platform.machine()}, Python {platform.python_version()}\n"
            f"libraries: torch {torch.__version__} ({torch.get_num_threads()} threads), onnx {onnx.__version__}, "
            f"onnxruntime {onnxruntime.__version__}\n"
            f"date: {datetime.datetime.now().isoformat(timespec='seconds')}, {load}")


def interleaved_times(fns: list, runs: int) -> list[list[float]]:
    """Times of each function over `runs` rounds, alternating within a round, after one warm-up of each.

    Alternating spreads background load over both sides alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for i in range(runs):
        order = list(range(len(fns)))
        if i % 2:
            order.reverse()
        for j in order:
            start = time.perf_counter()
            fns[j]()
            times[j].append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="timed runs per side (default 7)")
    ap.add_argument("--spec", default="resnet50", choices=sorted(tvm.BUILDERS), help="network (default resnet50)")
    args = ap.parse_args()
    print(machine())

    from safetensors.torch import save_file

    spec = ROOT / "specs" / f"{args.spec}.cnn"
    model = tvm.BUILDERS[args.spec](seed=0)
    x = torch.randn(1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / f"{args.spec}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")},
                  str(weights))
        ours_out, theirs_out = tmp / "cnncomp.onnx", tmp / "torch.onnx"

        def ours():
            cnncomp.compile(spec, output=ours_out, opt_level=1, weights=weights)

        def theirs():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation warning
                torch.onnx.export(model, (x,), str(theirs_out), dynamo=False, opset_version=17, input_names=["x"],
                                  output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})

        all_ours, all_theirs = interleaved_times([ours, theirs], args.runs)
        t_ours, t_theirs = statistics.median(all_ours), statistics.median(all_theirs)
        print(f"\n{args.spec}, median of {args.runs} runs each (after one warm-up, the two sides alternating):")
        print(f"  cnncomp.compile(-O1, weights from .safetensors, write .onnx): {t_ours * 1e3:8.0f} ms"
              f"   (runs: {', '.join(f'{t * 1e3:.0f}' for t in all_ours)})")
        print(f"  torch.onnx.export(dynamo=False, opset 17):                  {t_theirs * 1e3:8.0f} ms"
              f"   (runs: {', '.join(f'{t * 1e3:.0f}' for t in all_theirs)})")
        print(f"  speed-up torch.onnx.export / cnncomp: {t_theirs / t_ours:.2f}x (goal >= 5x, aim 10x)")
        print(f"  file sizes: cnncomp {ours_out.stat().st_size / 2**20:.1f} MiB, "
              f"torch {theirs_out.stat().st_size / 2**20:.1f} MiB")

        # Where cnncomp's time goes: the stages cnncomp.compile runs, timed one by one.
        from cnncomp.emit.onnx import check_onnx, emit_onnx, save_onnx
        from cnncomp.pipeline import optimize

        stages = {"load spec + weights, -O1 passes": [], "emit ONNX": [], "onnx.checker + shape inference": [],
                  "serialize + write": []}
        for _ in range(max(3, args.runs // 2)):
            t0 = time.perf_counter()
            compiled = optimize(spec, None, weights, 0, 1, None)
            t1 = time.perf_counter()
            onnx_model = emit_onnx(compiled.graph, compiled.weights, opset=17)
            t2 = time.perf_counter()
            check_onnx(onnx_model)
            t3 = time.perf_counter()
            save_onnx(onnx_model, ours_out)
            t4 = time.perf_counter()
            for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[key].append(dt)
            del compiled, onnx_model
        print("  cnncomp stages (medians; separate runs, so they need not add up to the median above):")
        for key, times in stages.items():
            print(f"    {key:<34} {statistics.median(times) * 1e3:7.0f} ms")


if __name__ == "__main__":
    main()
