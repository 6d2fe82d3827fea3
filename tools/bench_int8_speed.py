"""What int8's speed checks measure and what they cost (precision/int8_speed.py). Run by hand, not a test:

    python tools/bench_int8_speed.py [--models mobilenet_v2,resnet50] [--repeat 3]

For each network (the bundled spec, seeded weights, batch 1, one thread, ONNX Runtime CPU):

- per kind of layer (depthwise conv, 1x1 conv, other conv, gemm), the summed float32 and int8 times of
  ONNX Runtime's profiler mapped to the layer groups (`layer_speed`; the issue's reference point for
  MobileNetV2: int8 depthwise 1.38 ms vs 1.29 ms float32, int8 1x1 2.30 ms vs 6.19 ms);
- the seconds the timing adds to an int8 compile: the per-layer profile (only when the budget search runs)
  and the whole-model interleaved timing of the not-faster rule (always), measured and from the cache;
- the noise the not-faster margin must cover: the float32 model timed against itself, `--repeat` times
  (interleaved medians), as |ratio - 1|.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import cnncomp  # noqa: E402
from cnncomp.precision import int8_speed  # noqa: E402
from cnncomp.precision.int8 import Quantizer  # noqa: E402


def kind_of(node: onnx.NodeProto, weights: dict) -> str:
    """depthwise / 1x1 / conv / gemm / other, from the node's op type and its weight's shape."""
    if node.op_type == "Gemm":
        return "gemm"
    if node.op_type != "Conv":
        return "other"
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    shape = weights[node.input[1]].shape
    if group > 1 and shape[1] == 1:
        return "depthwise"
    return "1x1" if tuple(shape[2:]) == (1, 1) else "conv"


def bench(name: str, repeat: int) -> None:
    model = cnncomp.compile(str(ROOT / "specs" / f"{name}.cnn"), opt_level=1)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    rng = np.random.default_rng(0)
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    calibration = {model.graph.input[0].name: rng.standard_normal([8] + shape[1:]).astype(np.float32)}
    feeds = {k: v[:1] for k, v in calibration.items()}
    quantizer = Quantizer(model, calibration, "minmax")
    try:
        int8_model = quantizer.quantize()
        start = time.perf_counter()
        profile = int8_speed.layer_speed(model, int8_model, quantizer.groups, feeds, {"bench": 1}, use_cache=False)
        profile_s = time.perf_counter() - start
        start = time.perf_counter()
        int8_speed.layer_speed(model, int8_model, quantizer.groups, feeds, {"bench": 1})
        profile_cached_s = time.perf_counter() - start
        start = time.perf_counter()
        float_ms, int8_ms, _ = int8_speed.time_models(model, int8_model, feeds, use_cache=False)
        whole_s = time.perf_counter() - start
        start = time.perf_counter()
        int8_speed.time_models(model, int8_model, feeds)
        whole_cached_s = time.perf_counter() - start
        noise = []
        for _ in range(repeat):
            a, b, _ = int8_speed.time_models(model, model, feeds, use_cache=False)
            noise.append(abs(b / a - 1))
    finally:
        quantizer.close()
    kinds: dict[str, list[float]] = {}
    for group, t in profile.layers.items():
        entry = kinds.setdefault(kind_of(nodes[group], weights), [0.0, 0.0, 0])
        entry[0] += t.float_ms
        entry[1] += t.int8_ms
        entry[2] += 1
    print(f"\n{name} (batch 1, 1 thread, ONNX Runtime CPU profiler; layers summed by kind)")
    print(f"{'kind':<10} {'layers':>6} {'float32 ms':>11} {'int8 ms':>8} {'int8 speed-up':>14}")
    for kind in ("depthwise", "1x1", "conv", "gemm", "other"):
        if kind in kinds:
            f, i, count = kinds[kind]
            print(f"{kind:<10} {count:>6} {f:>11.2f} {i:>8.2f} {f / i if i else float('nan'):>13.2f}x")
    slower = [g for g, t in profile.layers.items() if t.added_ms < 0]
    print(f"profiled totals: float32 {profile.float_total_ms:.2f} ms, int8 {profile.int8_total_ms:.2f} ms; "
          f"{len(slower)} of {len(profile.layers)} layer groups slower in int8")
    print(f"whole model, interleaved medians: float32 {float_ms:.2f} ms, int8 {int8_ms:.2f} ms "
          f"({float_ms / int8_ms:.2f}x)")
    print(f"added to an int8 compile: per-layer profile {profile_s:.2f} s ({profile_cached_s:.3f} s cached), "
          f"whole-model timing {whole_s:.2f} s ({whole_cached_s:.3f} s cached)")
    print(f"float32 against itself, |ratio - 1| over {repeat} timings: " + ", ".join(f"{n:.1%}" for n in noise))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet50")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CNNCOMP_CACHE_DIR"] = cache
        for name in args.models.split(","):
            bench(name, args.repeat)


if __name__ == "__main__":
    main()
