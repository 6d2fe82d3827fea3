"""The PyTorch reference interpreter and the trainable ReferenceModule."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cnncomp.run.reference import ReferenceModule, run_reference, to_torch
from cnncomp.ir.weights import init_weights, save_safetensors
from cnncomp.frontend.cnn.loader import load_text
from cnncomp.errors import CnnError
from cnncomp.ops.registry import all_ops

RESNETISH = """network resnetish
input x: [N, 3, 16, 16]
stem = x -> conv(8, k=3, s=2, p=1, bias=false) as conv1 -> bn as bn1 -> relu
layer1 = stem -> repeat 2 { bottleneck(4, 16) }
head = layer1 -> gap -> flatten -> linear(10) as fc
aux = layer1 -> conv(2, k=1) -> prelu
output head, aux
"""


@pytest.fixture(scope="module")
def graph():
    return load_text(RESNETISH, "ref.cnn")


def _x(batch=2, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, 16, 16)).astype(np.float32)


def test_layer_errors_name_the_layer_and_spec_line(monkeypatch):
    graph = load_text("network t\ninput x: [N, 4]\ny = x -> linear(3)\n    -> relu\noutput y\n", "err.cnn")

    def boom(attrs, inputs, weights):
        raise ValueError("boom")

    monkeypatch.setattr(all_ops()["relu"], "torch_ref", boom)
    with pytest.raises(CnnError) as err:
        run_reference(graph, init_weights(graph, 0), {"x": np.zeros((2, 4), np.float32)})
    assert err.value.message == "while executing layer 'y.1' (err.cnn:4:8): ValueError: boom"
    assert str(err.value.loc) == "err.cnn:4:8"
    assert "-> relu" in str(err.value)


def test_a_wrong_reference_shape_is_caught(monkeypatch):
    graph = load_text("network t\ninput x: [N, 4, 6]\ny = x -> gmp\noutput y\n", "err.cnn")
    monkeypatch.setattr(all_ops()["gmp"], "torch_ref", lambda attrs, inputs, weights: inputs[0].amax(-1))
    with pytest.raises(CnnError, match=r"layer 'y.0' .*computed shape \[2, 4\], the spec infers \[N, 4, 1\]"):
        run_reference(graph, {}, {"x": np.zeros((2, 4, 6), np.float32)})


def test_input_errors(graph):
    weights = init_weights(graph, 0)
    with pytest.raises(CnnError, match=r"missing input 'x' \(shape \[N, 3, 16, 16\]\)"):
        run_reference(graph, weights, {})
    with pytest.raises(CnnError, match="unknown input 'y'"):
        run_reference(graph, weights, {"x": _x(), "y": _x()})
    with pytest.raises(CnnError, match=r"input 'x' has shape \[2, 3, 16\], the spec declares \[N, 3, 16, 16\]"):
        run_reference(graph, weights, {"x": _x()[..., 0]})


def test_capture_returns_every_layer(graph):
    weights = init_weights(graph, 0)
    outputs, layers = run_reference(graph, weights, {"x": _x()}, capture=True)
    assert set(layers) == {layer.name for layer in graph.layers()}
    np.testing.assert_array_equal(layers["fc"], outputs["head"])
    assert layers["layer1.0.conv1"].shape == (2, 4, 8, 8)
    assert outputs["head"].dtype == np.float32
    out64 = run_reference(graph, weights, {"x": _x()}, dtype=torch.float64)
    assert out64["head"].dtype == np.float64
    np.testing.assert_allclose(out64["head"], outputs["head"], atol=1e-5, rtol=1e-4)


def test_module_state_dict_keys_are_the_weight_names(graph):
    module = to_torch(graph, seed=0)
    keys = list(module.state_dict())
    expected = [f"{layer.name}.{s}" for layer in graph.layers() for s in layer.weights]
    assert keys == expected
    assert "layer1.0.bn1.running_var" in keys and "layer1.0.downsample.0.weight" in keys
    assert "conv1.weight" in keys and "fc.bias" in keys
    params = dict(module.named_parameters())
    assert "layer1.0.bn1.weight" in params and "layer1.0.bn1.running_mean" not in params
    assert dict(module.named_buffers()).keys() == {k for k in keys if k.endswith(("running_mean", "running_var"))}
    assert isinstance(module.get_submodule("layer1.0.conv2"), torch.nn.Module)


def test_module_forward_matches_the_interpreter_and_trains(graph):
    weights = init_weights(graph, 1)
    module = ReferenceModule(graph, weights).eval()  # eval(): the inference form the reference computes
    x = _x()
    head, aux = module(torch.from_numpy(x))
    want = run_reference(graph, weights, {"x": x})
    np.testing.assert_allclose(head.detach().numpy(), want["head"], atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(aux.detach().numpy(), want["aux"], atol=1e-6, rtol=1e-6)
    (head.square().mean() + aux.mean()).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    before = module.get_submodule("fc").weight.detach().clone()
    opt.step()
    assert not torch.equal(before, module.get_submodule("fc").weight)


def test_module_double_copy_and_load_state_dict(graph, tmp_path):
    weights = init_weights(graph, 2)
    module = to_torch(graph, weights).eval()
    x = _x()
    want64 = run_reference(graph, weights, {"x": x}, dtype=torch.float64)
    head64, _ = copy.deepcopy(module).double()(torch.from_numpy(x).double())
    np.testing.assert_allclose(head64.detach().numpy(), want64["head"], atol=1e-12, rtol=1e-12)
    other = to_torch(graph, seed=9).eval()
    other.load_state_dict(module.state_dict())
    torch.testing.assert_close(other(torch.from_numpy(x))[0], module(torch.from_numpy(x))[0])
    save_safetensors(weights, tmp_path / "w.safetensors")
    from_file = to_torch(graph, tmp_path / "w.safetensors").eval()
    torch.testing.assert_close(from_file(torch.from_numpy(x))[1], module(torch.from_numpy(x))[1])


def test_single_output_and_argument_count():
    graph = load_text("network t\ninput x: [N, 4]\ny = x -> linear(3)\noutput y\n", "t.cnn")
    module = to_torch(graph)
    assert isinstance(module(torch.zeros(2, 4)), torch.Tensor)
    with pytest.raises(CnnError, match=r"takes 1 input\(s\) \(x\), got 2"):
        module(torch.zeros(2, 4), torch.zeros(2, 4))


def test_layer_names_that_clash_with_module_attributes():
    graph = load_text("network t\ninput x: [N, 4]\ny = x -> linear(3) as train\noutput y\n", "t.cnn")
    with pytest.raises(CnnError, match="layer name 'train' cannot be a PyTorch module path"):
        to_torch(graph)
