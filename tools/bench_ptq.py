"""Post-training quantization methods against real trained networks: the table of docs/precision.md.

Run by hand: `python tools/bench_ptq.py [--nets paddle-cls,digits-mnv2] [--trained W.safetensors]`.
Nothing is downloaded. Networks and data:

  paddle-cls    PaddleOCR's text direction classifier (tests/data/trained, Apache-2.0), imported with
                `cnncomp import`, on text rendered with PIL in matplotlib's DejaVu fonts, upright and upside
                down (random words, sizes and offsets): 48 images calibrate, 64 others are the test set
  digits-cnn    examples/digits/digits.cnn (four convs) trained on scikit-learn's 8x8 digits for 6 epochs
                (tests/ptq_helpers.py, as the tests train it); 256 training images calibrate, 300 others test
  digits-mnv2   examples/digits/mobilenet_v2_digits.cnn trained on scikit-learn's digits
                (tools/bench_int8_trained.py's recipe, about a minute); 144 training images calibrate,
                the 360 test images are the test set

For each method: full int8 (no layer kept in float32), the relative L2 error of the outputs against the
float32 model on the test set and the top-1 agreement with float32's decisions. Methods: ONNX Runtime's
calibrations (percentile: cnncomp's default, minmax, entropy), ranges.py's per-tensor MSE ranges,
layer_ranges.py's ranges chosen by their readers' output error (alone and + bias correction), then
+ rounding.py's weight rounding, + bias correction (on), + cross-layer equalization (--passes
fold-bn,equalize).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnncomp.precision.bias_correction import bias_corrections  # noqa: E402
from cnncomp.precision.int8 import ErrorProbe, Quantizer  # noqa: E402

PADDLE = ROOT / "tests" / "data" / "trained" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
WORDS = ("invoice", "total", "cnncomp", "2026", "quantize", "hello world", "receipt no.", "Paris", "int8",
         "ONNX Runtime", "data", "page 12", "the quick brown fox", "VAT 20%", "tel. 555-0199", "address")


def text_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` rendered lines of text [count, 3, 48, 192] (PaddleOCR's preprocessing), half upside down."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = [font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight=w)) for w in
             ("normal", "bold")] + [font_manager.findfont(font_manager.FontProperties(family="DejaVu Serif"))]
    images, flipped = [], []
    for i in range(count):
        text = " ".join(rng.choice(WORDS, rng.integers(1, 3)))
        image = Image.new("RGB", (192, 48), tuple(int(v) for v in rng.integers(200, 256, 3)))
        font = ImageFont.truetype(fonts[i % len(fonts)], int(rng.integers(18, 30)))
        ink = tuple(int(v) for v in rng.integers(0, 80, 3))
        ImageDraw.Draw(image).text((int(rng.integers(2, 20)), int(rng.integers(2, 14))), text, fill=ink, font=font)
        upside_down = i % 2 == 1
        if upside_down:
            image = image.rotate(180)
        x = (np.asarray(image, np.float32) / 255.0 - 0.5) / 0.5
        images.append(x.transpose(2, 0, 1))
        flipped.append(upside_down)
    return np.stack(images), np.array(flipped)


def paddle_cls(passes: list[str], calibration_count: int = 48, test_count: int = 64
               ) -> tuple[onnx.ModelProto, dict, dict]:
    """The classifier imported and compiled (-O1, or `passes`), calibration and test images."""
    import cnncomp

    tmp = Path(tempfile.mkdtemp(prefix="bench-ptq-"))
    model = onnx.load(str(PADDLE))
    for info in model.graph.input:
        dims = info.type.tensor_type.shape.dim
        dims[0].Clear()
        dims[0].dim_param = "N"
        for d, v in zip(dims[2:], (48, 192)):
            d.Clear()
            d.dim_value = v
    for info in model.graph.output:
        for d in info.type.tensor_type.shape.dim:
            d.Clear()
    onnx.save(model, str(tmp / "pinned.onnx"))
    cnncomp.import_onnx(tmp / "pinned.onnx", tmp / "net.cnn")
    compiled = cnncomp.compile(tmp / "net.cnn", weights=tmp / "net.safetensors", opt_level=1,
                               **({"passes": passes} if passes else {}))
    name = compiled.graph.input[0].name
    calibration, _ = text_images(calibration_count, seed=1)
    test, _ = text_images(test_count, seed=2)
    return compiled, {name: calibration}, {name: test}


def digits_mnv2(passes: list[str], trained: str | None) -> tuple[onnx.ModelProto, dict, dict]:
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_int8_trained import SPEC, load_data, train

    from cnncomp.ir.weights import load_weights, save_safetensors
    from cnncomp.pipeline import emit_model, optimize

    x_train, y_train, x_test, _ = load_data()
    graph = optimize(SPEC, opt_level=0).ref_graph
    if trained and Path(trained).exists():
        weights = load_weights(trained, graph)
    else:
        weights = train(graph, x_train, y_train, 20)
        if trained:
            save_safetensors(weights, trained)
    model = emit_model(optimize(SPEC, weights=weights, **({"passes": passes} if passes else {})))
    return model, {"x": x_train[:144]}, {"x": x_test}


def digits_cnn(passes: list[str]) -> tuple[onnx.ModelProto, dict, dict]:
    sys.path.insert(0, str(ROOT / "tests"))
    from ptq_helpers import trained_digits

    return trained_digits(passes=tuple(passes))


def measure(model: onnx.ModelProto, calibration: dict, test: dict, method: str, rounding: str,
            bias: bool) -> tuple[float, float, float]:
    """(relative L2 error vs float32, top-1 agreement with float32, seconds to quantize) of full int8."""
    outputs = {o.name: None for o in model.graph.output}
    reference = ErrorProbe(test, outputs).outputs(model)
    probe = ErrorProbe(test, reference)
    start = time.perf_counter()
    # runtime=None: no placement rule keeps a layer in float32 (full int8, as the table was first measured)
    quantizer = Quantizer(model, calibration, method, weight_rounding=rounding, runtime=None)
    try:
        quantized = quantizer.quantize()
        if bias:
            quantizer.bias_shifts = bias_corrections(model, quantized, calibration)
            quantized = quantizer.quantize()
    finally:
        quantizer.close()
    seconds = time.perf_counter() - start
    got = probe.outputs(quantized)
    name = next(iter(reference))
    ref = np.asarray(reference[name]).reshape(len(next(iter(test.values()))), -1)
    agree = float(np.mean(np.asarray(got[name]).reshape(ref.shape).argmax(1) == ref.argmax(1)))
    return probe.error(quantized), agree, seconds


ROWS = (("percentile (default)", "percentile", "nearest", False, []),
        ("minmax", "minmax", "nearest", False, []),
        ("entropy", "entropy", "nearest", False, []),
        ("mse ranges", "mse", "nearest", False, []),
        ("percentile + gptq rounding", "percentile", "gptq", False, []),
        ("mse + gptq rounding", "mse", "gptq", False, []),
        ("percentile + bias correction", "percentile", "nearest", True, []),
        ("mse + bias correction", "mse", "nearest", True, []),
        ("mse + gptq + bias correction", "mse", "gptq", True, []),
        ("percentile + equalize", "percentile", "nearest", False, ["fold-bn", "equalize"]),
        ("mse + gptq + equalize", "mse", "gptq", False, ["fold-bn", "equalize"]),
        ("mse + gptq + bias correction + equalize", "mse", "gptq", True, ["fold-bn", "equalize"]),
        ("layer ranges", "layer", "nearest", False, []),  # rows 13, 14: added after the others kept their numbers
        ("layer + bias correction", "layer", "nearest", True, []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", default="paddle-cls,digits-mnv2")
    parser.add_argument("--trained", metavar="W", help="digits-mnv2: reuse trained weights; written if missing")
    parser.add_argument("--rows", default="", help="comma-separated row numbers (1-based) to run; default all")
    args = parser.parse_args()
    wanted = {int(r) for r in args.rows.split(",") if r} or set(range(1, len(ROWS) + 1))
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, full int8, errors against "
          "float32 on the test set")
    for net in args.nets.split(","):
        models: dict[tuple, tuple] = {}
        print(f"\n## {net}\n| method | rel L2 error | top-1 agreement | seconds |\n| --- | --- | --- | --- |")
        for number, (label, method, rounding, bias, passes) in enumerate(ROWS, 1):
            if number not in wanted:
                continue
            key = tuple(passes)
            if key not in models:
                models[key] = {"paddle-cls": lambda: paddle_cls(passes), "digits-cnn": lambda: digits_cnn(passes),
                               "digits-mnv2": lambda: digits_mnv2(passes, args.trained)}[net]()
            error, agree, seconds = measure(*models[key], method, rounding, bias)
            print(f"| {label} | {error:.4f} | {agree:.2%} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
