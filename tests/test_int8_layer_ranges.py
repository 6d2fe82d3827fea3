"""Activation ranges chosen by the output error of their readers (precision/layer_ranges.py,
--calibration-method layer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from cnncomp.precision.int8 import ErrorProbe, Quantizer  # noqa: E402
from cnncomp.precision.layer_ranges import (  # noqa: E402
    CLIP_FRACTIONS, Choice, Reader, candidate_ranges, fake_quantizer, int8_weight, layer_ranges, overridden, percentile_range, readers_of, run_reader,
)
from cnncomp.precision.ranges import Histogram, cache_number, mse_range  # noqa: E402
from cnncomp.onnx_graph import consumers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_int8_ranges import activation_scales  # noqa: E402


def histogram_of(values: np.ndarray) -> Histogram:
    histogram = Histogram(np.zeros(2048, np.int64), float(values.min()), float(values.max()))
    histogram.add(values)
    return histogram


def model_of(nodes, inits, inputs, output, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_percentile_range_cuts_what_onnx_runtimes_percentile_cuts():
    rng = np.random.default_rng(0)
    values = np.abs(rng.standard_normal(2_000_000))
    values[:3] = 60.0  # three outliers in two million: beyond the 0.0005% cut at the top
    histogram = histogram_of(values)
    lo, hi = percentile_range(histogram)
    width = (values.max() - values.min()) / 2048
    assert lo == 0.0
    assert abs(hi - np.quantile(values, 1 - 5e-6)) < 2 * width
    assert hi < 10


def test_the_candidates_are_minmax_percentile_mse_and_clipped_fractions():
    rng = np.random.default_rng(1)
    values = np.abs(rng.standard_normal(1_000_000))
    values[0] = 40.0
    histogram = histogram_of(values)
    candidates = candidate_ranges(histogram, symmetric=False)
    assert candidates[0] == (0.0, pytest.approx(40.0))
    assert percentile_range(histogram) in candidates
    assert mse_range(histogram) in candidates
    assert (0.0, pytest.approx(20.0)) in candidates  # half the observed range
    assert len(candidates) == len(set(candidates))
    uniform = histogram_of(np.random.default_rng(2).uniform(0, 4, 100_000))
    # min-max, percentile and mse nearly agree on a uniform: one of them is tried
    assert len(candidate_ranges(uniform, symmetric=False)) == 1 + len(CLIP_FRACTIONS)


@pytest.mark.parametrize("symmetric", [False, True])
def test_fake_quantization_is_onnx_runtimes(symmetric):
    """The candidates' rounding against a QuantizeLinear/DequantizeLinear pair run by ONNX Runtime with the
    scale and zero point ONNX Runtime's quantizer computes for the range."""
    import onnxruntime as ort
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    lo, hi = -0.7, 2.3
    kind = onnx.TensorProto.INT8 if symmetric else onnx.TensorProto.UINT8
    qmin, qmax = get_qmin_qmax_for_qType(kind, symmetric=symmetric)
    zero, scale = compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32), qmin, qmax, symmetric)
    inits = {"s": np.array(scale, np.float32), "z": np.array(zero).astype(np.int8 if symmetric else np.uint8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    session = ort.InferenceSession(model_of(nodes, inits, [("x", [1000])], "y").SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).uniform(-3, 4, 1000).astype(np.float32)
    expected = session.run(None, {"x": x})[0]
    got = fake_quantizer(symmetric)(torch.from_numpy(x), lo, hi).numpy()
    ties = np.abs(x / scale - np.round(x / scale)) > 0.4999  # x/scale and x*(1/scale) may round a tie apart
    np.testing.assert_allclose(got[~ties], expected[~ties], rtol=0, atol=1e-6)
    assert ties.sum() < 5


def test_a_mean_shift_counts_more_than_noise_of_the_same_size(monkeypatch):
    """Candidate (0, 1) leaves zero-mean noise of 0.1 in the reader's output, candidate (0, 2) a shift of 0.05 in
    every value: a quarter of the squared error, but the layers after it would add the shift up coherently."""
    import cnncomp.precision.layer_ranges as layer_ranges_module

    weight = layer_ranges_module.BIAS_WEIGHT

    def choice_of(weight: float):
        monkeypatch.setattr(layer_ranges_module, "BIAS_WEIGHT", weight)
        choice = Choice([(0.0, 1.0), (0.0, 2.0)], [Reader("x")])
        reference = torch.ones(1, 2, 4)
        noise = torch.tensor([0.1, -0.1, 0.1, -0.1]).expand(1, 2, 4)
        choice.add(0, reference, iter([reference + noise, reference + 0.05]))
        return choice.best()

    assert choice_of(0.0) == (0.0, 2.0)
    assert choice_of(weight) == (0.0, 1.0)


def test_a_tensor_that_is_zero_on_every_sample_keeps_the_quantizers_range():
    weight = np.ones((2, 2, 1, 1), np.float32)
    model = model_of([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                      helper.make_node("Conv", ["r", "w"], ["y"], name="conv")], {"w": weight},
                     [("x", [None, 2, 4, 4])], "y")
    calibration = {"x": -np.random.default_rng(7).uniform(0.1, 1, (4, 2, 4, 4)).astype(np.float32)}
    chosen = layer_ranges(model, {"x": (-1.0, -0.1), "r": (0.0, 0.0), "y": (0.0, 0.0)}, calibration)
    assert "r" not in chosen and "y" not in chosen  # nothing to choose between: no candidate range


def _conv_relu_pool_conv() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    inits = {"w0": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
             "w1": rng.standard_normal((3, 4, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("MaxPool", ["r0"], ["p0"], name="pool0", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p0", "w1"], ["c1"], name="conv1"),
             helper.make_node("Add", ["c1", "c1"], ["y"], name="add")]
    return model_of(nodes, inits, [("x", [None, 2, 8, 8])], "y")


def test_readers_look_through_pass_through_ops_and_the_overridden_ranges_are_left():
    model = _conv_relu_pool_conv()
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    names = {"x", "c0", "r0", "p0", "c1", "y"}
    # ONNX Runtime gives a lone Relu's input the Relu's output range, and a max pool's output its input's
    assert overridden(model, names) == {"c0", "p0"}
    readers = readers_of("r0", consumers(model), {"y"}, weights)
    assert [(r.tensor, r.node.name) for r in readers] == [("p0", "conv1")]  # the conv behind the max pool
    assert [(r.tensor, r.node) for r in readers_of("c1", consumers(model), {"y"}, weights)] == [("c1", None)]
    assert [(r.tensor, r.node) for r in readers_of("y", consumers(model), {"y"}, weights)] == [("y", None)]


def _ignored_channel_net() -> tuple[onnx.ModelProto, dict, dict]:
    """x [N, 2, 16, 16] -> conv(4, k=3): channel 0 of x spans [0, 100] but the conv barely weighs it, channel 1
    spans [0, 1] and carries the output."""
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    weight[:, 0] *= 1e-4
    model = model_of([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], {"w": weight},
                     [("x", [None, 2, 16, 16])], "y")

    def samples(count, seed):
        x = np.random.default_rng(seed).uniform(0, 1, (count, 2, 16, 16)).astype(np.float32)
        x[:, 0] *= 100
        return {"x": x}

    return model, samples(16, 5), samples(16, 6)


def test_the_readers_error_clips_a_channel_the_tensors_own_error_keeps_and_the_layer_output_is_better():
    """The tensor's own error keeps the whole [0, 100] (a uniform: nothing to clip); the conv reading it does not
    feel channel 0, so its output error is least with the narrowest candidate, which rounds channel 1 finer.
    Measured on the int8 model ONNX Runtime runs, on other samples: the layer choice's output error is lower."""
    model, calibration, test = _ignored_channel_net()
    extremes = {"x": (0.0, float(calibration["x"].max()))}
    histogram = histogram_of(calibration["x"])
    mse = mse_range(histogram)
    chosen = layer_ranges(model, extremes, calibration)["x"]
    assert mse[1] > 0.95 * extremes["x"][1]
    assert chosen[1] < 0.6 * extremes["x"][1]
    probe = ErrorProbe(test, ErrorProbe(test, {"y": None}).outputs(model))
    errors, scales = {}, {}
    for method in ("mse", "layer"):
        quantizer = Quantizer(model, calibration, method)
        try:
            quantized = quantizer.quantize()
            cached = json.loads(quantizer._cache.read_text())["data"]["x"]
        finally:
            quantizer.close()
        errors[method], scales[method] = probe.error(quantized), activation_scales(quantized)["x"]
        # the range in the cache is the one quantize_static used: read back from the QDQ model
        assert scales[method] == pytest.approx(cache_number(cached["highest"]) / 255, rel=1e-2)
    assert scales["layer"] == pytest.approx(chosen[1] / 255, rel=1e-2)
    assert errors["layer"] < 0.7 * errors["mse"]


def test_readers_and_weights_match_onnx_runtime_on_a_bundled_spec():
    """examples/digits/mobilenet_v2_digits.cnn (seeded weights): every conv (strided, grouped, padded) and the
    gemm as run_reader computes it equals ONNX Runtime's output of that node; int8_weight equals the weights
    of the QDQ model; the `layer` ranges are the ranges quantize_static used."""
    from cnncomp.pipeline import emit_model, optimize
    from cnncomp.precision.calibration import seeded_calibration
    from cnncomp.precision.int8_support import with_outputs
    from cnncomp.run.session import Session

    compiled = optimize(str(ROOT / "examples" / "digits" / "mobilenet_v2_digits.cnn"), opt_level=1)
    model = emit_model(compiled)
    calibration = seeded_calibration(compiled.ref_graph, 0, 8)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert any(dict((a.name, a.i) for a in n.attribute).get("group", 1) > 1 for n in layers)
    tensors = sorted({t for n in layers for t in (n.input[0], n.output[0])} - {"x"})
    values = Session(with_outputs(model, tensors), "cpu", quiet=True).run({"x": calibration["x"][:2]}, tensors)
    values["x"] = calibration["x"][:2]
    for node in layers:
        bias = torch.from_numpy(np.require(weights[node.input[2]], np.float32, 'CW')) if len(node.input) > 2 else None
        x, weight = (torch.from_numpy(np.require(a, np.float32, 'CW')) for a in (values[node.input[0]], weights[node.input[1]]))
        got = run_reader(node, x, weight, bias)
        np.testing.assert_allclose(got.numpy(), values[node.output[0]], rtol=1e-4, atol=1e-4, err_msg=node.name)

    quantizer = Quantizer(model, calibration, "layer", runtime=None)
    try:
        quantized = quantizer.quantize()
        cached = json.loads(quantizer._cache.read_text())["data"]
    finally:
        quantizer.close()
    inits = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    dequantized = {n.output[0]: (inits[n.input[0]].astype(np.float32), inits[n.input[1]]) for n in quantized.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8}
    float_nodes = {n.name: n for n in model.graph.node}
    compared = 0
    for node in (n for n in quantized.graph.node if n.op_type == "Conv" and n.input[1] in dequantized):
        q, scale = dequantized[node.input[1]]
        original = weights[float_nodes[node.name].input[1]]
        np.testing.assert_allclose(q * scale.reshape(-1, 1, 1, 1), int8_weight(original), rtol=1e-6, atol=1e-7)
        compared += 1
    assert compared >= 10
    scales = activation_scales(quantized)
    expected = [(max(cache_number(e["highest"]), 0) - min(cache_number(e["lowest"]), 0)) / 255 for e in cached.values()]
    assert len(scales) >= 10
    for name, scale in scales.items():
        assert any(scale == pytest.approx(e, rel=1e-2) for e in expected), name


def test_compile_takes_calibration_method_layer(tmp_path, capsys):
    from cnncomp.cli import main

    spec = tmp_path / "net.cnn"
    spec.write_text("network n\ninput x: [N, 3, 16, 16]\ny = x -> conv(8, k=3, p=1) -> relu -> conv(4, k=3, p=1)\n"
                    "output y\n")
    assert main(["compile", str(spec), "--precision", "int8", "--calibration-method", "layer", "--max-error", "0.5",
                 "--keep-slower-int8", "-o", str(tmp_path / "net.onnx")]) == 0
    assert "int8: layer calibration" in capsys.readouterr().err
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "net.onnx")).graph.node)
