"""Weights: seeded initialization, loading PyTorch and safetensors files, errors, atomic saving."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from cnncomp.emit.onnx import emit_onnx
from cnncomp.run.reference import run_reference
from cnncomp.ir.weights import init_weights, load_weights, save_safetensors
from cnncomp.frontend.cnn.loader import load_text
from cnncomp.errors import CnnError

SPEC = """network small
input x: [N, 3, 8, 8]
features = x -> conv(6, k=3, p=1) -> bn -> relu -> maxpool(k=2)
logits = features -> flatten -> linear(10)
output logits
"""


class Small(nn.Module):
    """The PyTorch model SPEC describes, parameter names included."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2))
        self.logits = nn.Sequential(nn.Flatten(), nn.Linear(96, 10))

    def forward(self, x):
        return self.logits(self.features(x))


def _trained_small() -> Small:
    torch.manual_seed(0)
    model = Small()
    with torch.no_grad():
        bn = model.features[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.num_batches_tracked += 7
    return model.eval()


@pytest.fixture
def graph():
    return load_text(SPEC, "small.cnn")


def test_init_is_seeded_and_independent_of_layer_order():
    a = load_text("network t\ninput x: [N, 3, 8, 8]\np = x -> conv(4, k=3) as c1\nq = x -> conv(5, k=1) as c2\n"
                  "output p, q\n", "t.cnn")
    b = load_text("network t\ninput x: [N, 3, 8, 8]\nq = x -> conv(5, k=1) as c2\np = x -> conv(4, k=3) as c1\n"
                  "output p, q\n", "t.cnn")
    wa, wb = init_weights(a, 3), init_weights(b, 3)
    assert list(wa) != list(wb) and set(wa) == set(wb)
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name])
    again = init_weights(a, 3)
    assert all(np.array_equal(again[n], wa[n]) for n in wa)
    other = init_weights(a, 4)
    assert not np.array_equal(other["c1.weight"], wa["c1.weight"])
    bound = 1 / np.sqrt(3 * 9)
    assert np.abs(wa["c1.weight"]).max() <= bound and wa["c1.weight"].dtype == np.float32


def test_batch_norm_statistics_are_not_trivial(graph):
    w = init_weights(graph, 0)
    assert np.abs(w["features.1.running_mean"]).min() > 0
    assert not np.allclose(w["features.1.running_var"], 1.0)
    assert not np.allclose(w["features.1.weight"], 1.0)
    assert not np.allclose(w["features.1.bias"], 0.0)


@pytest.mark.parametrize("layout", ["plain", "nested", "module_prefix"])
def test_pytorch_checkpoint_matches_pytorch_model(layout, graph, tmp_path, helpers):
    model = _trained_small()
    state = model.state_dict()
    assert "features.1.num_batches_tracked" in state
    if layout == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    payload = {"state_dict": state, "epoch": 3, "lr": 0.1} if layout == "nested" else state
    path = tmp_path / "small.pt"
    torch.save(payload, path)
    weights = load_weights(path, graph)
    assert set(weights) == {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = run_reference(graph, weights, {"x": x})["logits"]
    helpers.assert_close(got, want, 1e-5, 1e-4, "reference vs PyTorch")
    onnx_out = helpers.ort_run(emit_onnx(graph, weights), {"x": x})["logits"]
    helpers.assert_close(onnx_out, want, 1e-5, 1e-4, "ONNX vs PyTorch")


def test_mismatches_are_listed_in_one_error(graph, tmp_path):
    state = _trained_small().state_dict()
    del state["features.0.bias"]
    del state["logits.1.weight"]
    state["features.1.running_var"] = torch.ones(7)
    state["head.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CnnError) as err:
        load_weights(path, graph)
    message = err.value.message
    assert message.startswith(f"weights file '{path}' does not match network 'small': 2 missing, 1 unexpected, "
                              "1 with the wrong shape or type")
    assert "  missing: features.0.bias [6]" in message
    assert "  missing: logits.1.weight [10, 96]" in message
    assert "  unexpected: head.weight" in message
    assert "  mismatch: features.1.running_var is [7], the spec expects [6]" in message
    assert "num_batches_tracked" not in message
    assert "Traceback" not in str(err.value)


def test_prefixed_keys_get_a_hint(graph, tmp_path):
    state = {f"model.{k}": v for k, v in _trained_small().state_dict().items()}
    torch.save(state, tmp_path / "prefixed.pt")
    with pytest.raises(CnnError, match="hint: the file's keys carry a prefix 'model.'"):
        load_weights(tmp_path / "prefixed.pt", graph)


def test_unreadable_files(graph, tmp_path):
    with pytest.raises(CnnError, match="does not exist"):
        load_weights(tmp_path / "none.pt", graph)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CnnError, match="cannot read weights file"):
        load_weights(tmp_path / "junk.pt", graph)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(CnnError, match="cannot read weights file"):
        load_weights(tmp_path / "junk.safetensors", graph)
    torch.save({"state_dict": Small()}, tmp_path / "pickled_module.pt")  # weights_only refuses modules
    with pytest.raises(CnnError, match="cannot read weights file"):
        load_weights(tmp_path / "pickled_module.pt", graph)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CnnError, match="holds list, expected a state_dict"):
        load_weights(tmp_path / "list.pt", graph)


def test_safetensors_round_trip(graph, tmp_path):
    weights = init_weights(graph, 5)
    path = tmp_path / "w.safetensors"
    save_safetensors(weights, path)
    loaded = load_weights(path, graph)
    assert set(loaded) == set(weights)
    for name in weights:
        np.testing.assert_array_equal(loaded[name], weights[name])
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_safetensors_bfloat16_is_widened(graph, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.to(torch.bfloat16) for k, v in _trained_small().state_dict().items()
             if not k.endswith("num_batches_tracked")}
    save_file(state, str(tmp_path / "bf16.safetensors"))
    loaded = load_weights(tmp_path / "bf16.safetensors", graph)
    assert loaded["features.0.weight"].dtype == np.float32


def test_save_safetensors_leaves_no_partial_file(graph, tmp_path, monkeypatch):
    import safetensors.numpy

    path = tmp_path / "w.safetensors"
    path.write_bytes(b"previous")

    def partial(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", partial)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors(init_weights(graph, 0), path)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["w.safetensors"]
