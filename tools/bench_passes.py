"""Pass benchmarks: ONNX Runtime latency of bundled specs at -O0, -O1 and under the rewrites.

Run by hand: `python tools/bench_passes.py [--specs resnet50,mobilenet_v2,vgg16] [--runs 20]`.
`--trained` instead measures -O3 on trained networks (scikit-learn's digits, see tools/digits_demo.py):
the speed/accuracy frontier, over several budgets, of the speed-up against -O1 under ONNX Runtime and
the top-1 agreement with the float32 -O1 model on the test images (`--plot F.png` draws it).
`--o3-time resnet50` instead times `-O3` itself (the whole optimize call: wall clock and CPU seconds, with
the load average before and after, since on a shared machine the wall clock measures the other users too).
For each spec it prints, against -O0 and -O1 measured in the same run (the settings take turns
within each round): MACs, median latency (batch 1, ONNX Runtime CPU, default graph optimizations)
and the ratios, and for each rewrite setting its
measured relative L2 output error against the float64 reference on seeded inputs. The weights are
seeded, not trained: the errors say how much each setting perturbs a random network, not what
accuracy a trained one keeps (tools/digits_demo.py measures that on real data).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnncomp.emit.onnx import emit_onnx  # noqa: E402
from cnncomp.run.reference import run_reference  # noqa: E402
from cnncomp.run.session import Session  # noqa: E402
from cnncomp.verification.harness import make_inputs  # noqa: E402
from cnncomp.pipeline import optimize  # noqa: E402
from cnncomp.ir.cost import graph_cost  # noqa: E402
from cnncomp.verification.compare import relative_output_error  # noqa: E402

SETTINGS = [
    ("-O0", dict(opt_level=0)),
    ("-O1", dict(opt_level=1)),
    ("-O2", dict(opt_level=2)),
    ("bottleneck(ratio=0.5)", dict(passes="fold-bn,bottleneck(ratio=0.5)")),
    ("bottleneck(ratio=0.25)", dict(passes="fold-bn,bottleneck(ratio=0.25)")),
    ("depthwise(m=2)", dict(passes="fold-bn,depthwise(m=2)")),
    ("depthwise(m=1)", dict(passes="fold-bn,depthwise(m=1)")),
]


def interleaved_latencies(models: list, feeds, runs: int, statistic=statistics.median) -> list[float]:
    """Seconds per run of each model (the median of the runs, or another `statistic`); the models take turns
    within each round, so a passing load on the machine falls on all of them alike."""
    sessions = [Session(model, quiet=True, spinning=False) for model in models]
    for session in sessions:
        for _ in range(3):
            session.run(feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(feeds)
            times[i].append(time.perf_counter() - start)
    return [statistic(t) for t in times]


def time_o3(name: str) -> None:
    """How long `-O3` (seeded weights, default budget) takes on a bundled spec: wall and CPU seconds, load."""
    from datetime import datetime, timezone

    spec = ROOT / "specs" / f"{name}.cnn"
    load_before = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    compiled = optimize(spec, opt_level=3)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    load_after = os.getloadavg()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; load average (1, 5, 15 min) before {', '.join(f'{v:.2f}' for v in load_before)}"
          f", after {', '.join(f'{v:.2f}' for v in load_after)}")
    print(f"-O3 {name}: {wall:.1f} s wall clock, {cpu:.1f} s CPU (this process; forked workers not counted)")
    print(compiled.budget.summary())


TRAINED = [("digits (width 32)", {"width": "32"}, 40), ("digits (width 64)", {"width": "64"}, 30)]


def frontier(budgets: list[float], runs: int, plot: str | None, cache: str | None = None) -> None:
    """For each trained network: -O1, then -O3 at each budget (and with --autotune at two): MACs, ONNX Runtime
    latency (batch 64, one thread, interleaved with -O1; the fastest run, which other users' load disturbs
    least), speed-up, test accuracy, top-1 agreement with -O1. Trained weights are kept in `cache`."""
    from datetime import datetime, timezone

    import torch

    sys.path.insert(0, str(ROOT / "tools"))
    from digits_demo import SPEC, load_data, train  # noqa: E402

    from cnncomp.ir.weights import load_weights, save_safetensors
    from cnncomp.run.reference import to_torch

    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = load_data()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"ONNX Runtime CPU, batch 64, one thread, fastest of {runs} interleaved runs")
    curves = {}
    for name, defines, epochs in TRAINED:
        graph = optimize(SPEC, defines, opt_level=0).ref_graph
        cached = Path(cache) / f"digits_w{defines['width']}_e{epochs}.safetensors" if cache else None
        if cached is not None and cached.exists():
            trained = load_weights(cached, graph)
        else:
            module = to_torch(graph)
            train(module, x_train, y_train, epochs)
            module.eval()
            trained = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
            if cached is not None:
                save_safetensors(trained, cached)
        settings = [("-O1", dict(opt_level=1))]
        settings += [(f"-O3 {b:g}", dict(opt_level=3, max_error=b)) for b in budgets]
        settings += [(f"-O3 {b:g} --autotune", dict(opt_level=3, max_error=b, autotune=True)) for b in budgets[-2:]]
        models, rows = [], []
        for label, options in settings:
            start = time.perf_counter()
            compiled = optimize(SPEC, defines, weights=trained, calibration={"x": x_train[:256]}, **options)
            seconds = time.perf_counter() - start
            model = emit_onnx(compiled.graph, compiled.weights)
            logits = Session(model, quiet=True).run({"x": x_test})["logits"]
            models.append(model)
            rows.append((label, graph_cost(compiled.graph)[1], logits.argmax(1), seconds, compiled.budget))
        batch = {"x": x_test[:64]}
        latencies = interleaved_latencies(models, batch, runs, min)
        print(f"\n{name}, trained {epochs} epochs; -O3 chose on 192 training images, checked on 64 held out")
        print(f"  {'setting':<22} {'MACs':>11} {'ms':>7} {'speed-up':>8} {'accuracy':>8} {'agrees':>7} "
              f"{'held-out error':>14} {'-O3 s':>6}")
        base = rows[0][2]
        points = []
        for (label, macs, top1, seconds, report), ms in zip(rows, latencies):
            agree = float((top1 == base).mean())
            speedup = latencies[0] / ms
            error = f"{report.held_out_error:.3g}" if report is not None else "-"
            print(f"  {label:<22} {macs:>11,} {ms * 1e3:>7.2f} {speedup:>7.2f}x {float((top1 == y_test).mean()):>8.2%} "
                  f"{agree:>7.2%} {error:>14} {seconds:>6.1f}")
            points.append((label, speedup, agree))
        curves[name] = points
        sys.stdout.flush()
    if plot:
        _plot(curves, plot)


def _plot(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        plain = [p for p in points if "autotune" not in p[0]]
        ax.plot([p[1] for p in plain], [p[2] * 100 for p in plain], "o-", label=name)
        for label, x, y in plain:
            ax.annotate(label.replace("-O3 ", ""), (x, y * 100), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("speed-up against -O1 (ONNX Runtime CPU, batch 64)")
    ax.set_ylabel("top-1 agreement with float32 -O1 (%)")
    ax.set_title("-O3 on trained networks, by --max-error")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", default="resnet50,mobilenet_v2,vgg16")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--o3-time", metavar="SPEC", help="time -O3 on this bundled spec and stop")
    parser.add_argument("--trained", action="store_true", help="the -O3 frontier on trained digits networks")
    parser.add_argument("--budgets", default="0.01,0.02,0.05,0.1,0.2,0.3")
    parser.add_argument("--plot", metavar="PNG", help="with --trained: draw the frontier (needs matplotlib)")
    parser.add_argument("--cache", metavar="DIR", help="with --trained: keep the trained weights here")
    args = parser.parse_args()
    if args.o3_time:
        time_o3(args.o3_time)
        return
    if args.trained:
        frontier([float(b) for b in args.budgets.split(",")], args.runs, args.plot, args.cache)
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {date.today()}; "
          f"ONNX Runtime CPU, batch 1, median of {args.runs} runs")
    for name in args.specs.split(","):
        spec = ROOT / "specs" / f"{name}.cnn"
        base = optimize(spec, opt_level=0)
        feeds = make_inputs(base.ref_graph, 0, batch=1)
        reference = run_reference(base.ref_graph, base.ref_weights, feeds, dtype=torch.float64)
        print(f"\n{name}")
        print(f"  {'setting':<24} {'MACs':>15} {'ms':>9} {'vs -O0':>7} {'vs -O1':>7} {'rel L2 error':>13}")
        models, rows = [], []
        for label, options in SETTINGS:
            compiled = optimize(spec, **options)
            model = emit_onnx(compiled.graph, compiled.weights)
            error = relative_output_error(Session(model, quiet=True).run(feeds), reference)
            models.append(model)
            rows.append((label, graph_cost(compiled.graph)[1], error))
        latencies = [t * 1e3 for t in interleaved_latencies(models, feeds, args.runs)]
        for (label, macs, error), ms in zip(rows, latencies):
            print(f"  {label:<24} {macs:>15,} {ms:>9.2f} {latencies[0] / ms:>6.2f}x {latencies[1] / ms:>6.2f}x "
                  f"{error:>13.3g}")
        sys.stdout.flush()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
