"""Front-end speed: elaborating resnet50, generated specs of 1k, 5k and 10k layers, specs of
5,000 and 50,000 statements (`let` constants, and a chain of one-layer statements), and
`--emit torch` on chains of 2k, 4k and 8k statements.

Run by hand: `python tools/bench_frontend.py` (`--quick` leaves out the 50,000-statement and
8k-emit cases). Prints the median of several runs and the time per layer or statement, so that
linear scaling shows as a flat figure. Goals: resnet50 under 100 ms after import; per-layer time
flat from 1k to 10k layers; 50,000 statements load in seconds (issue 21: 8,000 lets took 4 s and
50,000 did not finish; --emit torch took 11/31/115 s on 2k/4k/8k statements), per-statement time
within 2x of the 5,000 figure.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnncomp.frontend.cnn.loader import load_spec, load_text  # noqa: E402
from cnncomp.frontend.cnn.parser import parse  # noqa: E402


def generated_spec(layers: int) -> str:
    """A plain chain of conv -> bn -> relu stages, 3 layers per stage, 100 stages per statement."""
    stages = layers // 3
    lines = ["network generated", "input x: [N, 8, 16, 16]"]
    previous, k = "x", 0
    while stages > 0:
        n = min(stages, 100)
        lines.append(f"t{k} = {previous} -> repeat {n} {{ conv(8, k=3, p=1, bias=false) -> bn -> relu }}")
        previous, k, stages = f"t{k}", k + 1, stages - n
    lines.append(f"output {previous}")
    return "\n".join(lines) + "\n"


def lets_spec(statements: int) -> str:
    """A spec of many `let` constants, each reading the one before."""
    lines = ["network lets", "input x: [N, 8, 16, 16]", "let c0 = 1"]
    lines += [f"let c{i} = c{i - 1} + 1" for i in range(1, statements)]
    return "\n".join(lines + ["y = x -> relu", "output y"]) + "\n"


def chain_spec(statements: int) -> str:
    """A chain of one-layer statements: t0 = x -> relu, t1 = t0 -> relu, ..."""
    lines = ["network chain", "input x: [N, 8, 16, 16]"]
    lines += [f"t{i} = {'x' if i == 0 else f't{i - 1}'} -> relu" for i in range(statements)]
    return "\n".join(lines + [f"output t{statements - 1}"]) + "\n"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    spec = ROOT / "specs" / "resnet50.cnn"
    load_spec(spec)  # warm: grammar and standard blocks are built once per process
    t = median_time(lambda: load_spec(spec), 20)
    print(f"resnet50: elaborate {t * 1e3:.1f} ms (goal < 100 ms)")
    print(f"{'layers':>8} {'parse ms':>10} {'elaborate ms':>13} {'us/layer':>9}")
    baseline = None
    for n in (1000, 5000, 10000):
        text = generated_spec(n)
        tp = median_time(lambda: parse(text, "gen.cnn"), 3)
        graph = load_text(text, "gen.cnn")
        te = median_time(lambda: load_text(text, "gen.cnn"), 3)
        per_layer = te / len(graph) * 1e6
        baseline = baseline or per_layer
        print(f"{len(graph):>8} {tp * 1e3:>10.1f} {te * 1e3:>13.1f} {per_layer:>9.1f}"
              f"  ({per_layer / baseline:.2f}x the 1k figure per layer)")
    # one run each, wall and CPU time: on a loaded machine the CPU time shows the scaling
    print(f"{'statements':>10} {'kind':>6} {'load s':>8} {'cpu s':>7} {'cpu us/stmt':>12}")
    for kind, make in (("let", lets_spec), ("chain", chain_spec)):
        baseline = None
        for n in (5000,) if quick else (5000, 50000):
            text = make(n)
            wall, cpu = timed(lambda: load_text(text, f"{kind}{n}.cnn"))
            per = cpu / n * 1e6
            baseline = baseline or per
            print(f"{n:>10} {kind:>6} {wall:>8.2f} {cpu:>7.2f} {per:>12.1f}  ({per / baseline:.2f}x the 5,000 figure)")
    from cnncomp.emit.torch.emit import emit_torch

    print(f"{'statements':>10} {'--emit torch s':>15} {'cpu s':>7} {'cpu us/stmt':>12}")
    baseline = None
    for n in (2000, 4000) if quick else (2000, 4000, 8000):
        graph = load_text(chain_spec(n), f"chain{n}.cnn")
        wall, cpu = timed(lambda: emit_torch(graph, format=False, check=False))
        per = cpu / n * 1e6
        baseline = baseline or per
        print(f"{n:>10} {wall:>15.2f} {cpu:>7.2f} {per:>12.1f}  ({per / baseline:.2f}x the 2k figure)")


def timed(fn) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


if __name__ == "__main__":
    main()
