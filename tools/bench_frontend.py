"""Front-end speed: elaborating resnet50, and generated specs of 1k, 5k and 10k layers.

Run by hand: `python tools/bench_frontend.py`. Prints the median of several runs and the
time per layer, so that linear scaling shows as a flat per-layer figure. Goal: resnet50
under 100 ms after import; per-layer time flat from 1k to 10k layers.
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


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
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


if __name__ == "__main__":
    main()
