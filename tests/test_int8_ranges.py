"""Per-tensor MSE activation ranges for int8 (precision/ranges.py, --calibration-method mse)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

pytest.importorskip("onnxruntime")

from cnncomp.precision.int8 import ErrorProbe, Quantizer  # noqa: E402
from cnncomp.precision.ranges import Histogram, cache_number, mse_range  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def histogram_of(values: np.ndarray) -> Histogram:
    histogram = Histogram(np.zeros(2048, np.int64), float(values.min()), float(values.max()))
    histogram.add(values)
    return histogram


def int8_mse(values: np.ndarray, lo: float, hi: float) -> float:
    """The mean squared error of uint8 fake quantization over [lo, hi] (as ONNX Runtime does it)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255
    zero = np.round(-lo / scale)
    q = np.clip(np.round(values / scale) + zero, 0, 255)
    return float(np.mean(((q - zero) * scale - values) ** 2))


def symmetric_mse(values: np.ndarray, t: float) -> float:
    scale = 2 * t / 255
    q = np.clip(np.round(values / scale), -128, 127)
    return float(np.mean((q * scale - values) ** 2))


# Clipping pays when the outliers' squared clipping error is below the rounding noise it saves over all the
# other values: for outliers far out, about one in a million values or fewer (a long tail, not a second mode).
def test_outliers_are_clipped_for_a_lower_error_than_minmax():
    rng = np.random.default_rng(0)
    values = np.abs(rng.standard_normal(2_000_000))  # a ReLU-like output
    values[0] = 40.0  # one outlier in two million
    lo, hi = mse_range(histogram_of(values))
    assert lo == 0.0
    assert 3 < hi < 20  # inside the outlier, outside the bulk
    assert int8_mse(values, lo, hi) < 0.5 * int8_mse(values, values.min(), values.max())


def test_a_signed_tensor_gets_both_ends_chosen():
    rng = np.random.default_rng(1)
    values = rng.standard_normal(2_000_000)
    values[0], values[1] = -40.0, 35.0
    lo, hi = mse_range(histogram_of(values))
    assert -20 < lo < -2 and 2 < hi < 20
    assert int8_mse(values, lo, hi) < 0.5 * int8_mse(values, values.min(), values.max())


def test_a_uniform_keeps_its_range():
    values = np.random.default_rng(2).uniform(0, 4, 100_000)
    lo, hi = mse_range(histogram_of(values))
    assert lo == 0.0 and hi > 0.97 * values.max()


def test_symmetric_threshold_for_tensorrt():
    rng = np.random.default_rng(3)
    values = rng.standard_normal(2_000_000)
    values[0] = 40.0
    lo, hi = mse_range(histogram_of(values), symmetric=True)
    assert lo == -hi and 2 < hi < 20
    assert symmetric_mse(values, hi) < 0.5 * symmetric_mse(values, np.abs(values).max())
    uniform = rng.uniform(-1, 1, 100_000)
    assert mse_range(histogram_of(uniform), symmetric=True)[1] > 0.97


def _conv_net(seed: int = 0) -> onnx.ModelProto:
    """conv -> relu -> conv -> relu -> conv, opset 17, 3 -> 8 -> 8 -> 4 channels."""
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "x"
    for i, (cin, cout) in enumerate(((3, 8), (8, 8), (8, 4))):
        inits += [numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32),
                                          f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1, f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        x = f"c{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 3, 64, 64])],
                              [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def inputs_with_an_outlier(count: int, seed: int) -> dict:
    """Gaussian images with one bright pixel in the whole set (one value in 400,000)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, 3, 64, 64)).astype(np.float32)
    x[0, 0, 10, 10] = 200.0
    return {"x": x}


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """{quantized activation: its scale} read back from the QDQ model's QuantizeLinear nodes."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]].reshape(-1)[0]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_the_ranges_written_to_the_cache_are_those_quantize_static_used(activations):
    model = _conv_net()
    calibration = inputs_with_an_outlier(32, 0)
    minmax, mse = Quantizer(model, calibration, "minmax", activations), Quantizer(model, calibration, "mse", activations)
    try:
        cached = json.loads(mse._cache.read_text())["data"]
        scales, minmax_scales = activation_scales(mse.quantize()), activation_scales(minmax.quantize())
    finally:
        minmax.close()
        mse.close()

    def scale_of(entry) -> float:
        lo, hi = min(cache_number(entry["lowest"]), 0.0), max(cache_number(entry["highest"]), 0.0)
        return (hi - lo) / 255 if activations == "uint8" else 2 * max(-lo, hi) / 255

    expected = [scale_of(entry) for entry in cached.values()]
    assert len(scales) >= 3
    for name, scale in scales.items():
        # its own entry, or (int8: a conv and its relu share one scale) another's; ONNX Runtime nudges the
        # range so that zero is a level, within a step of the cached one
        assert any(scale == pytest.approx(e, rel=1e-2) for e in expected), name
    assert scales["x"] == pytest.approx(scale_of(cached["x"]), rel=1e-2)
    assert scales["x"] < 0.8 * minmax_scales["x"]  # the bright pixel is clipped


RESIDUAL = ("network res\ninput x: [N, 3, 12, 12]\n"
            "a = x -> conv(8, k=3, p=1) as stem -> relu\n"
            "b = a -> conv(8, k=3, p=1) as inner -> hardswish -> conv(8, k=1) as outer\n"
            "s = a + b\n"
            "y = s -> relu -> maxpool(k=2) -> gap as pool -> flatten -> linear(5) as fc -> softmax\n"
            "output y\n")


def _spec_model(tmp_path, text: str) -> onnx.ModelProto:
    from cnncomp.pipeline import emit_model, optimize

    path = tmp_path / "net.cnn"
    path.write_text(text)
    return emit_model(optimize(str(path)))


@pytest.mark.parametrize("net", ["conv", "residual", "digits"])
def test_the_min_max_cache_is_the_one_onnx_runtimes_calibrator_writes(tmp_path, net):
    """The refined methods' extremes come from cnncomp's own pass (ranges.write_minmax_cache, on the float taps
    the later passes share): the same tensors and the same extremes as quantize_static's MinMax calibration of the
    whole model (a hard-swish, a softmax, pools and an add among the ops), within float32's rounding (the
    calibrator runs the model unoptimized, the taps optimized: a conv's sums in another order)."""
    from cnncomp.precision.ranges import write_minmax_cache

    if net == "conv":
        model, calibration = _conv_net(), inputs_with_an_outlier(8, 1)
    elif net == "residual":
        model = _spec_model(tmp_path, RESIDUAL)
        calibration = {"x": np.random.default_rng(3).standard_normal((6, 3, 12, 12)).astype(np.float32)}
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        pytest.importorskip("sklearn")
        from ptq_helpers import trained_digits

        model, calibration, _ = trained_digits()
    minmax = Quantizer(model, calibration, "minmax")
    try:
        theirs = json.loads(minmax._cache.read_text())
    finally:
        minmax.close()
    ours_path = tmp_path / "ours.json"
    write_minmax_cache(ours_path, model, calibration)
    ours = json.loads(ours_path.read_text())
    assert {k: v for k, v in ours.items() if k != "data"} == {k: v for k, v in theirs.items() if k != "data"}
    assert ours["data"].keys() == theirs["data"].keys() and len(theirs["data"]) >= 3
    for name, entry in theirs["data"].items():
        for end in ("lowest", "highest"):
            mine, want = ours["data"][name][end], entry[end]
            assert {**mine, "data": None} == {**want, "data": None}, name  # the encoding: a float32 numpy array
            assert cache_number(mine) == pytest.approx(cache_number(want), rel=1e-5, abs=1e-7), (name, end)


def test_mse_ranges_lower_the_error_of_a_trained_text_classifier():
    """PaddleOCR's text direction classifier (tests/data/trained) on rendered lines of text: per-tensor MSE
    ranges against the default percentile, full int8, errors against float32 on other images."""
    pytest.importorskip("PIL")
    pytest.importorskip("matplotlib")
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_ptq import PADDLE, paddle_cls

    if not PADDLE.is_file():
        pytest.skip("the PaddleOCR classifier is not in tests/data/trained")
    model, calibration, test = paddle_cls([], calibration_count=24, test_count=24)
    probe = ErrorProbe(test, ErrorProbe(test, {o.name: None for o in model.graph.output}).outputs(model))
    errors = {}
    for method in ("percentile", "mse"):
        quantizer = Quantizer(model, calibration, method)
        try:
            errors[method] = probe.error(quantizer.quantize())
        finally:
            quantizer.close()
    assert errors["mse"] < 0.9 * errors["percentile"]


@pytest.mark.parametrize("flags,said", [(["--calibration-method", "mse"], "int8: mse calibration"),
                                        (["--weight-rounding", "gptq"], "int8: percentile calibration")])
def test_compile_takes_the_new_int8_options(tmp_path, capsys, flags, said):
    from cnncomp.cli import main

    spec = tmp_path / "net.cnn"
    spec.write_text("network n\ninput x: [N, 3, 16, 16]\ny = x -> conv(8, k=3, p=1) -> relu -> conv(4, k=3, p=1)\n"
                    "output y\n")
    assert main(["compile", str(spec), "--precision", "int8", *flags, "--max-error", "0.5", "--keep-slower-int8",
                 "-o", str(tmp_path / "net.onnx")]) == 0
    assert said in capsys.readouterr().err
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "net.onnx")).graph.node)
