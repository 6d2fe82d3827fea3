"""Each layer's int8 error alone from the full QDQ model (precision/sensitivity.py), and the quantizer's kept
models (precision/int8.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

pytest.importorskip("onnxruntime")

from cnncomp.pipeline import emit_model, optimize  # noqa: E402
from cnncomp.precision.int8 import ErrorProbe, Quantizer  # noqa: E402
from cnncomp.precision import sensitivity  # noqa: E402
from cnncomp.precision.sensitivity import chunks_of_layers, errors_alone  # noqa: E402

NET = ("network small\ninput x: [N, 3, 16, 16]\n"
       "y = x -> conv(16, k=3, p=1) as c1 -> bn as b1 -> relu -> conv(16, k=3, p=1) as c2 -> bn as b2 -> relu\n"
       "   -> conv(32, k=3, s=2, p=1) as c3 -> relu -> gap as pool -> flatten as flat -> linear(10) as fc\n"
       "output y\n")
# a residual block: the block's input is read by a conv and by the add (both read its rounded version when
# the conv is quantized alone); two outputs, one of them the last layer's
RESIDUAL = ("network res\ninput x: [N, 3, 12, 12]\n"
            "a = x -> conv(8, k=3, p=1) as stem -> relu\n"
            "b = a -> conv(8, k=3, p=1) as inner -> relu -> conv(8, k=1) as outer\n"
            "s = a + b\n"
            "c = s -> relu\n"
            "y = c -> gap as pool -> flatten -> linear(5) as fc\n"
            "z = c -> conv(4, k=1) as side\n"
            "output y\noutput z\n")


def _setup(tmp_path, text, shape):
    path = tmp_path / "net.cnn"
    path.write_text(text)
    model = emit_model(optimize(str(path)))
    x = np.random.default_rng(1).standard_normal((16,) + shape).astype(np.float32)
    quantizer = Quantizer(model, {"x": x[:12]}, "percentile")
    names = {o.name: None for o in model.graph.output}
    held = {"x": x[12:]}
    probe = ErrorProbe(held, ErrorProbe(held, names).outputs(model))  # against float32: the old path's meter
    return model, quantizer, probe


@pytest.mark.parametrize("text, shape", [(NET, (3, 16, 16)), (RESIDUAL, (3, 12, 12))])
def test_errors_alone_are_those_of_the_network_quantized_one_layer_at_a_time(tmp_path, text, shape):
    """The old measurement quantized the network once per layer (quantize_static with only that layer) and
    ran it whole: the models derived from the full int8 one give the same errors."""
    model, quantizer, probe = _setup(tmp_path, text, shape)
    try:
        layers = list(quantizer.groups)
        errors = errors_alone(model, quantizer.quantize(), quantizer.groups, layers, probe)
        old = {layer: probe.error(quantizer.quantize(only=[layer])) for layer in layers}
    finally:
        quantizer.close()
    assert set(errors) == set(old)
    for layer in layers:
        assert errors[layer] == pytest.approx(old[layer], rel=1e-4, abs=1e-7), layer
        assert errors[layer] > 1e-4, layer
    assert sorted(layers, key=lambda l: -errors[l]) == sorted(layers, key=lambda l: -old[l])


@pytest.mark.parametrize("limit, jobs", [(1, 1), (12, 2)])
def test_layers_run_side_by_side_or_apart_give_the_same_errors(tmp_path, monkeypatch, limit, jobs):
    """The downstream parts of several layers run side by side in one session (the small nets: all of them in
    one) give each layer's error as a session of its own does (limit 1: one layer a session), to the bit, also
    in forked workers."""
    model, quantizer, probe = _setup(tmp_path, RESIDUAL, (3, 12, 12))
    try:
        layers = list(quantizer.groups)
        full = quantizer.quantize()
        together = errors_alone(model, full, quantizer.groups, layers, probe)
        assert len(chunks_of_layers(model, quantizer.groups, layers)) == 1
        monkeypatch.setattr(sensitivity, "COMBINED_NODES", limit)
        assert len(chunks_of_layers(model, quantizer.groups, layers)) > 1
        apart = errors_alone(model, full, quantizer.groups, layers, probe, jobs)
    finally:
        quantizer.close()
    assert apart == together


def test_chunks_hold_consecutive_layers_up_to_the_node_limit(tmp_path):
    path = tmp_path / "net.cnn"
    path.write_text(NET)
    model = emit_model(optimize(str(path)))
    quantizer = Quantizer(model, {"x": np.zeros((2, 3, 16, 16), np.float32)}, "minmax")
    try:
        groups = quantizer.groups
    finally:
        quantizer.close()
    layers = list(groups)
    total = len(model.graph.node)
    assert chunks_of_layers(model, groups, layers, limit=10 * total) == [list(range(len(layers)))]
    assert chunks_of_layers(model, groups, layers, limit=1) == [[i] for i in range(len(layers))]
    chunks = chunks_of_layers(model, groups, layers, limit=total)
    assert [i for chunk in chunks for i in chunk] == list(range(len(layers)))  # in order, each once
    position = {n.name: i for i, n in enumerate(model.graph.node)}
    for chunk in chunks:
        sizes = [total - min(position[m] for m in groups[layers[i]]) for i in chunk]
        assert len(chunk) == 1 or sum(sizes) <= total


def test_the_quantizer_quantizes_once_for_rounding_and_bias_correction(tmp_path, monkeypatch):
    """Bias correction and gptq rounding rewrite initializers only: the model quantize_static made is reused
    (one ResNet-50 quantize_static call is seconds), and what comes out is what quantizing again gives."""
    import onnxruntime.quantization as ortq

    from cnncomp.precision.bias_correction import bias_corrections

    path = tmp_path / "net.cnn"
    path.write_text(NET)
    model = emit_model(optimize(str(path)))
    x = np.random.default_rng(2).standard_normal((12, 3, 16, 16)).astype(np.float32)
    calls = []
    original = ortq.quantize_static
    monkeypatch.setattr(ortq, "quantize_static", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    quantizer = Quantizer(model, {"x": x}, "mse", weight_rounding="gptq")
    try:
        assert len(calls) == 1  # with the mse ranges (the min-max extremes are cnncomp's own pass)
        first = quantizer.quantize()
        quantizer.bias_shifts = bias_corrections(model, first, {"x": x})
        kept = quantizer.quantize()
        assert len(calls) == 1
        quantizer.ranges_changed()  # forgets the kept models: quantized afresh
        fresh = quantizer.quantize()
        assert len(calls) == 2
    finally:
        quantizer.close()
    values = {t.name: numpy_helper.to_array(t) for t in kept.graph.initializer}
    assert values.keys() == {t.name for t in fresh.graph.initializer}
    for t in fresh.graph.initializer:
        np.testing.assert_array_equal(values[t.name], numpy_helper.to_array(t), err_msg=t.name)
    assert kept.graph.node == fresh.graph.node
    first_values = {t.name: numpy_helper.to_array(t) for t in first.graph.initializer}
    assert any(not np.array_equal(first_values[k], v) for k, v in values.items())  # the biases moved


def test_the_meter_runs_a_model_once_and_gives_copies(tmp_path, monkeypatch):
    """ModelErrorMeter.outputs remembers the outputs of the latest models by their bytes: the whole-int8 model
    measured first and asked for again at the end is not run again; a changed model is; what a caller gets is its
    own copy."""
    from cnncomp.run import session as session_module

    model, quantizer, probe = _setup(tmp_path, NET, (3, 16, 16))
    try:
        quantized = quantizer.quantize()
        other = quantizer.quantize(exclude=[next(iter(quantizer.groups))])
    finally:
        quantizer.close()
    created = []
    original = session_module.Session

    class Counted(original):
        def __init__(self, *args, **kwargs):
            created.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(session_module, "Session", Counted)
    first = probe.outputs(quantized)
    name = next(iter(first))
    first[name][...] = 0  # the caller's own copy
    again = probe.outputs(quantized)
    assert len(created) == 1 and np.abs(again[name]).sum() > 0
    probe.outputs(other)
    assert len(created) == 2
    assert probe.error(quantized) == probe.error(None, again)
