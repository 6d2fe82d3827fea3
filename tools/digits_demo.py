"""Real-data demonstration: train a .cnn network on scikit-learn's digits, then compile it at -O3.

Run by hand: `python tools/digits_demo.py [--epochs 40] [--max-error 0.05] [--finetune 5]`.
Nothing is downloaded: load_digits ships with scikit-learn. Steps:
  1. examples/digits/digits.cnn -> cnncomp.to_torch -> train (Adam) on 80% of the images;
  2. compile at -O1 (exact) and at -O3 (the approximate rewrites under --max-error, measured on
     calibration images from the training set);
  3. optionally fine-tune the rewritten network a few epochs (through cnncomp.to_torch of the
     rewritten graph), then fold again;
  4. quantize the -O1 and -O3 models to int8 (QDQ, calibrated on 256 training images with
     --calibration-method, bias correction auto; every calibration method is compared on the -O1
     model), and an -O3 model whose rewrites were kept only where ONNX Runtime ran them faster in
     int8 (--autotune with --precision int8);
  5. report test accuracy, MACs and ONNX Runtime latency (batch 1 and 64) for each model.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnncomp.emit.onnx import emit_onnx  # noqa: E402
from cnncomp.run.reference import to_torch  # noqa: E402
from cnncomp.run.session import Session  # noqa: E402
from cnncomp.ir.weights import load_weights, save_safetensors  # noqa: E402
from cnncomp.pipeline import Compiled, optimize  # noqa: E402
from cnncomp.passes import PassContext, level_pipeline, run_pipeline  # noqa: E402
from cnncomp.ir.cost import graph_cost  # noqa: E402
from cnncomp.progress import progress, silenced  # noqa: E402
from cnncomp.precision.int8 import DEFAULT_METHOD, METHODS, quantize_int8  # noqa: E402

SPEC = ROOT / "examples" / "digits" / "digits.cnn"


def load_data(seed: int = 0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def train(module: torch.nn.Module, x, y, epochs: int, lr: float = 2e-3, seed: int = 0) -> None:
    torch.manual_seed(seed)
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    for _ in progress(range(epochs), label="train epochs"):
        for idx in torch.randperm(len(xs)).split(64):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(module(xs[idx]), ys[idx])
            loss.backward()
            optimizer.step()


def accuracy(model, x, y) -> float:
    session = Session(model, quiet=True)
    logits = session.run({"x": x})["logits"]
    return float((logits.argmax(1) == y).mean())


def latency_ms(model, batch: int, repeats: int = 200) -> float:
    session = Session(model, quiet=True, threads=1)
    x = np.random.default_rng(0).random((batch, 1, 8, 8), dtype=np.float32)
    return session.median_seconds({"x": x}, repeats, warmup=20) * 1e3


def int8(compiled, calibration: dict, method: str):
    """The compiled model as full int8 (no float32 layers), calibrated on `calibration`."""
    model = emit_onnx(compiled.graph, compiled.weights)
    quantized, _ = quantize_int8(model, compiled.graph, compiled.ref_graph, compiled.ref_weights, calibration,
                                 method=method)
    return quantized


def fold(graph, weights):
    ctx = PassContext(graph.copy(), dict(weights))
    run_pipeline(ctx, level_pipeline(1))
    return ctx.graph, ctx.weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--max-error", type=float, default=0.05)
    parser.add_argument("--finetune", type=int, default=0, help="epochs of fine-tuning after -O3 (0: none)")
    parser.add_argument("--trained", metavar="W", help="reuse trained weights (.safetensors); written if missing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (training epochs, -O3) on stderr")
    parser.add_argument("--calibration-method", choices=METHODS, default=DEFAULT_METHOD,
                        help=f"int8 calibration of the int8 rows (default {DEFAULT_METHOD})")
    args = parser.parse_args()
    with silenced(args.quiet):
        run_demo(args)


def run_demo(args) -> None:
    torch.set_num_threads(2)
    x_train, y_train, x_test, y_test = load_data()
    graph = optimize(SPEC, opt_level=0).ref_graph
    if args.trained and Path(args.trained).exists():
        trained = load_weights(args.trained, graph)
        print(f"loaded trained weights from {args.trained}")
    else:
        module = to_torch(graph)
        start = time.perf_counter()
        train(module, x_train, y_train, args.epochs)
        module.eval()
        trained = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
        print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.1f} s")
        if args.trained:
            save_safetensors(trained, args.trained)

    o1 = optimize(SPEC, weights=trained, opt_level=1)
    calibration = {"x": x_train[:256]}
    o3 = optimize(SPEC, weights=trained, opt_level=3, max_error=args.max_error, calibration=calibration)
    o3_int8 = optimize(SPEC, weights=trained, opt_level=3, max_error=args.max_error, calibration=calibration,
                       autotune=True, timing_precision="int8")
    rows = [("-O1 (exact)", o1), (f"-O3 (max-error {args.max_error})", o3),
            ("-O3 --autotune, timed in int8", o3_int8)]
    if args.finetune:
        tuned = to_torch(o3.graph, o3.weights)
        train(tuned, x_train, y_train, args.finetune, lr=5e-4, seed=1)
        tuned.eval()
        weights = {k: v.detach().numpy().copy() for k, v in tuned.state_dict().items()}
        graph, weights = fold(o3.graph, weights)
        rows.append((f"-O3 + {args.finetune} epochs fine-tune", Compiled(o3.ref_graph, o3.ref_weights, graph, weights)))
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
          f"{date.today()}; test images: {len(x_test)}")
    models = [(label, compiled, emit_onnx(compiled.graph, compiled.weights)) for label, compiled in rows]
    method = args.calibration_method
    models += [(f"{label} int8 ({method})", compiled, int8(compiled, calibration, method))
               for label, compiled in rows]
    print(f"{'model':<34} {'accuracy':>8} {'MACs':>10} {'params':>8} {'ms b=1':>8} {'ms b=64':>8}")
    base_macs = graph_cost(o1.graph)[1]
    for label, compiled, model in models:
        params, macs = graph_cost(compiled.graph)
        print(f"{label:<34} {accuracy(model, x_test, y_test):>8.2%} {macs:>10,} {params:>8,} "
              f"{latency_ms(model, 1):>8.3f} {latency_ms(model, 64):>8.3f}   MACs {base_macs / macs:.2f}x fewer")
    print("int8 calibration methods on the -O1 model: " + ", ".join(
        f"{m} {accuracy(int8(o1, calibration, m), x_test, y_test):.2%}" for m in METHODS))
    for label, compiled in rows[1:]:
        print(label + ":")
        for line in compiled.log:
            if "kept" in line or "no rewrite" in line:
                print("  " + line)


if __name__ == "__main__":
    main()
