"""cnncomp.to_torch: a trainable module whose train() mode behaves like torch.nn's layers."""

import numpy as np
import pytest
import torch

import cnncomp
from cnncomp.frontend.cnn.loader import load_text

SPEC = "network n\ninput x: [N, 3, 6, 6]\ny = x -> conv(4, k=3, bias=false) as c -> bn as b -> relu -> dropout(0.5)\n" \
       "    -> gap -> flatten -> linear(2) as fc\noutput y\n"


def test_train_mode_uses_batch_statistics_like_nn_batchnorm():
    module = cnncomp.to_torch(load_text(SPEC, "n.cnn"))
    reference = torch.nn.BatchNorm2d(4)
    reference.load_state_dict({k.split(".", 1)[1]: v for k, v in module.state_dict().items() if k.startswith("b.")},
                              strict=False)
    x = torch.randn(8, 3, 6, 6)
    module.train()
    reference.train()
    features = torch.nn.functional.conv2d(x, module.state_dict()["c.weight"])
    expected = reference(features)
    module(x)
    np.testing.assert_allclose(module.state_dict()["b.running_mean"].numpy(), reference.running_mean.numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(module.state_dict()["b.running_var"].numpy(), reference.running_var.numpy(),
                               rtol=1e-5, atol=1e-6)
    assert expected.shape == features.shape


def test_eval_mode_is_deterministic_and_training_reduces_the_loss():
    module = cnncomp.to_torch(load_text(SPEC, "n.cnn"))
    x, target = torch.randn(16, 3, 6, 6), torch.randint(0, 2, (16,))
    module.eval()
    assert torch.equal(module(x), module(x))
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(module(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_a_pytorch_state_dict_with_num_batches_tracked_loads_strictly():
    module = cnncomp.to_torch(load_text(SPEC, "n.cnn"))
    norm = torch.nn.BatchNorm2d(4).train()
    norm(torch.randn(8, 4, 4, 4))  # running statistics and num_batches_tracked = 1, as after training
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("b.")}
    state.update({f"b.{k}": v for k, v in norm.state_dict().items()})
    assert "b.num_batches_tracked" in state
    result = module.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(module.state_dict()["b.running_mean"], norm.running_mean)
    torch.testing.assert_close(module.state_dict()["b.running_var"], norm.running_var)
    assert "b.num_batches_tracked" not in module.state_dict()  # the keys stay the spec's weight names
    # only a layer's own count is accepted: under another name it is still an unexpected key
    state["nowhere.num_batches_tracked"] = torch.tensor(1)
    with pytest.raises(RuntimeError, match="nowhere.num_batches_tracked"):
        module.load_state_dict(state, strict=True)
