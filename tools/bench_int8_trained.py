"""Int8 on a trained MobileNetV2: what bias correction and cross-layer equalization do to the error.

Run by hand: `python tools/bench_int8_trained.py [--epochs 20] [--trained W.safetensors]`. Nothing is
downloaded: examples/digits/mobilenet_v2_digits.cnn (MobileNetV2 at 1x32x32, ten classes) is trained on
scikit-learn's digits, upsampled to 32x32 (80% of them, AdamW, one-cycle schedule; about a minute on two
cores), because trained depthwise layers (batch norms folded into them) are where the paper measured its
gains and the bundled specs have seeded weights. Then, calibrated on 144 training images:

  cnncomp int8       per-channel int8 weights, uint8 activations, percentile (the default), with bias
                     correction off, on, and auto (the default; it decides on calibration samples)
  + equalize         the same after `--passes fold-bn,equalize`
  per-tensor         ONNX Runtime's quantize_static default (per-tensor int8 weights, min-max), the
                     setting of the paper's Table 1, with and without equalize

Error: relative L2 of the logits against the float32 -O1 model on all 360 test images (none used for
training or calibration); accuracy: top-1 on those images.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT / "tests"))

from cnncomp.ir.weights import load_weights, save_safetensors  # noqa: E402
from cnncomp.pipeline import emit_model, optimize  # noqa: E402
from cnncomp.precision.bias_correction import bias_corrections  # noqa: E402
from cnncomp.precision.int8 import ErrorProbe, FeedReader, Quantizer, correct_biases, quiet_quantizer  # noqa: E402
from trained_nets import digits_data, train_digits  # noqa: E402  (the recipe of tests/trained_nets.py's digits nets)

SPEC = ROOT / "examples" / "digits" / "mobilenet_v2_digits.cnn"


def per_tensor(model: onnx.ModelProto, calibration: dict) -> onnx.ModelProto:
    from onnxruntime.quantization import quantize_static

    with tempfile.TemporaryDirectory() as tmp, quiet_quantizer():
        src, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        quantize_static(str(src), str(out), FeedReader(calibration), per_channel=False)
        return onnx.load(str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--trained", metavar="W", help="reuse trained weights (.safetensors); written if missing")
    args = parser.parse_args()
    torch.set_num_threads(2)
    x_train, y_train, x_test, y_test = digits_data(32)
    graph = optimize(SPEC, opt_level=0).ref_graph
    if args.trained and Path(args.trained).exists():
        weights = load_weights(args.trained, graph)
    else:
        start = time.perf_counter()
        weights = train_digits(SPEC, x_train, y_train, args.epochs, 3e-3)
        print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s")
        if args.trained:
            save_safetensors(weights, args.trained)
    calibration, test = {"x": x_train[:144]}, {"x": x_test}
    plain = emit_model(optimize(SPEC, weights=weights))
    equalized = optimize(SPEC, weights=weights, passes=["fold-bn", "equalize"])
    output = plain.graph.output[0].name
    probe = ErrorProbe(test, ErrorProbe(test, {output: None}).outputs(plain))
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}; {len(x_test)} test images; "
          f"equalize: {sum('equalized' in line for line in equalized.log)} streams rescaled")
    print(f"{'model':<44} {'rel L2 error':>12} {'accuracy':>9}")

    def row(label: str, model: onnx.ModelProto) -> None:
        logits = probe.outputs(model)[output]
        print(f"{label:<44} {probe.error(model):>12.4f} {np.mean(logits.argmax(1) == y_test):>9.2%}", flush=True)

    row("float32 -O1", plain)
    for label, model in (("", plain), (" + equalize", emit_model(equalized))):
        quantizer = Quantizer(model, calibration)
        try:
            quantized = quantizer.quantize()
            row(f"cnncomp int8{label}, bias correction off", quantized)
            quantizer.bias_shifts = bias_corrections(model, quantized, calibration)
            row(f"cnncomp int8{label}, bias correction on", quantizer.quantize())
            quantizer.bias_shifts = {}
            chosen, note = correct_biases(quantizer, quantized, calibration, 1, only_if_better=True)
            row(f"cnncomp int8{label}, auto ({'on' if quantizer.bias_shifts else 'off'})", chosen)
        finally:
            quantizer.close()
        row(f"per-tensor weights (ORT default){label}", per_tensor(model, calibration))


if __name__ == "__main__":
    main()
