"""A small CNN trained here on scikit-learn's digits, for the int8 post-training quantization tests
(test_int8_ranges.py, test_int8_rounding.py): real trained weights and real inputs in a few seconds."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "digits" / "digits.cnn"


def trained_digits(epochs: int = 6, passes: tuple[str, ...] = ()):
    """(float32 ONNX model after -O1 or `passes`, 256 calibration images, 300 held-out test images) of
    examples/digits/digits.cnn trained on 1400 of the digits (Adam, seeded)."""
    from cnncomp.pipeline import emit_model, optimize

    weights, x, train, test = _trained(epochs)
    model = emit_model(optimize(str(SPEC), weights=weights, **({"passes": list(passes)} if passes else {})))
    return model, {"x": x[train[:256]]}, {"x": x[test]}


@functools.lru_cache(maxsize=1)
def _trained(epochs: int):
    import torch
    from sklearn.datasets import load_digits

    from cnncomp.pipeline import optimize
    from cnncomp.run.reference import to_torch

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1400], order[1400:1700]
    graph = optimize(str(SPEC), opt_level=0).ref_graph
    torch.manual_seed(0)
    module = to_torch(graph)
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    xs, ys = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    with torch.enable_grad():
        for _ in range(epochs):
            for idx in torch.randperm(len(xs)).split(64):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(module(xs[idx]), ys[idx]).backward()
                optimizer.step()
    module.eval()
    weights = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
    return weights, x, train, test
