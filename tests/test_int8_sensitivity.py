"""Each layer's int8 error alone in one run (precision/sensitivity.py) and the quantizer's kept models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("onnxruntime")

from cnncomp.onnx_graph import consumers  # noqa: E402
from cnncomp.pipeline import emit_model, optimize  # noqa: E402
from cnncomp.precision.int8 import Quantizer  # noqa: E402
from cnncomp.precision.int8_support import with_outputs  # noqa: E402
from cnncomp.precision.sensitivity import errors_alone, layer_copies  # noqa: E402
from cnncomp.run.session import Session  # noqa: E402

NET = ("network small\ninput x: [N, 3, 16, 16]\n"
       "y = x -> conv(16, k=3, p=1) as c1 -> bn as b1 -> relu -> conv(16, k=3, p=1) as c2 -> bn as b2 -> relu\n"
       "   -> conv(32, k=3, s=2, p=1) as c3 -> relu -> gap as pool -> flatten as flat -> linear(10) as fc\n"
       "output y\n")


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.cnn"
    path.write_text(NET)
    model = emit_model(optimize(str(path)))
    x = np.random.default_rng(1).standard_normal((16, 3, 16, 16)).astype(np.float32)
    quantizer = Quantizer(model, {"x": x[:12]}, "percentile")
    yield model, quantizer, {"x": x[12:]}
    quantizer.close()


def _read_downstream(model: onnx.ModelProto, tensor: str) -> str:
    """The name the next layers read `tensor` under: its DequantizeLinear's output when a pair rounds it."""
    readers = consumers(model).get(tensor, [])
    if len(readers) == 1 and readers[0].op_type == "QuantizeLinear":
        return consumers(model)[readers[0].output[0]][0].output[0]
    return tensor


def test_each_layers_copy_computes_what_the_layer_quantized_alone_computes(small):
    """The old measurement quantized each layer alone (quantize_static once per layer): the copies beside the
    float32 model, all in one model, give that model's layer outputs exactly."""
    model, quantizer, held = small
    layers = list(quantizer.groups)
    combined, compared = layer_copies(model, quantizer.quantize(), quantizer.groups, layers)
    assert set(compared) == set(layers)
    copies = Session(combined, "cpu", quiet=True).run(held, [got for pairs in compared.values() for got, _ in pairs])
    for layer in layers:
        alone = quantizer.quantize(only=[layer])
        names = [_read_downstream(alone, want) for _, want in compared[layer]]
        values = Session(with_outputs(alone, names), "cpu", quiet=True).run(held, names)
        for name, (got, _) in zip(names, compared[layer]):
            np.testing.assert_array_equal(copies[got], values[name], err_msg=layer)


def test_errors_alone_are_the_layers_own_relative_errors_from_one_session(small, monkeypatch):
    from cnncomp.precision import sensitivity
    from cnncomp.run import session as session_module

    model, quantizer, held = small
    layers = list(quantizer.groups)
    full = quantizer.quantize()
    created = []
    original = session_module.Session

    class Counting(original):
        def __init__(self, *args, **kwargs):
            created.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(session_module, "Session", Counting)
    errors = errors_alone(model, full, quantizer.groups, layers, held)
    assert len(created) == 1  # every layer in one run
    monkeypatch.setattr(session_module, "Session", original)
    _, compared = sensitivity.layer_copies(model, full, quantizer.groups, layers)
    for layer in layers:  # measured independently: the layer quantized alone against the float32 model
        alone = quantizer.quantize(only=[layer])
        noise = signal = 0.0
        for _, want in compared[layer]:
            name = _read_downstream(alone, want)
            got = original(with_outputs(alone, [name]), "cpu", quiet=True).run(held, [name])[name]
            ref = original(with_outputs(model, [want]), "cpu", quiet=True).run(held, [want])[want]
            noise += float(np.sum((got.astype(np.float64) - ref) ** 2))
            signal += float(np.sum(ref.astype(np.float64) ** 2))
        assert errors[layer] == pytest.approx(np.sqrt(noise / signal), rel=1e-6), layer
        assert 0 < errors[layer] < 0.05


def test_the_quantizer_quantizes_once_for_rounding_and_bias_correction(small, monkeypatch):
    """Bias correction and gptq rounding rewrite initializers only: the model quantize_static made is reused
    (one ResNet-50 quantize_static call is seconds), and what comes out is what quantizing again gives."""
    import onnxruntime.quantization as ortq

    from cnncomp.precision.bias_correction import bias_corrections

    model, _, _ = small
    x = np.random.default_rng(2).standard_normal((12, 3, 16, 16)).astype(np.float32)
    calls = []
    original = ortq.quantize_static
    monkeypatch.setattr(ortq, "quantize_static", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    quantizer = Quantizer(model, {"x": x}, "mse", weight_rounding="gptq")
    try:
        assert len(calls) == 2  # calibrated (min-max extremes), then once more with the mse ranges
        first = quantizer.quantize()
        quantizer.bias_shifts = bias_corrections(model, first, {"x": x})
        kept = quantizer.quantize()
        assert len(calls) == 2
        quantizer.ranges_changed()  # forgets the kept models: quantized afresh
        fresh = quantizer.quantize()
        assert len(calls) == 3
    finally:
        quantizer.close()
    values = {t.name: numpy_helper.to_array(t) for t in kept.graph.initializer}
    assert values.keys() == {t.name for t in fresh.graph.initializer}
    for t in fresh.graph.initializer:
        np.testing.assert_array_equal(values[t.name], numpy_helper.to_array(t), err_msg=t.name)
    assert kept.graph.node == fresh.graph.node
    first_values = {t.name: numpy_helper.to_array(t) for t in first.graph.initializer}
    assert any(not np.array_equal(first_values[k], v) for k, v in values.items())  # the biases moved
