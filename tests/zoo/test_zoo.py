"""The zoo tier: torchvision's and timm's CNNs exported, imported, compiled and compared with PyTorch in
float64 (relative error at most 1e-4, or 4x PyTorch's own float32 error where that is larger).

A fast subset runs by default; the whole tier with CNNCOMP_ZOO=1 (about an hour on a 2-core machine;
`python tools/zoo_table.py` runs the same and prints the coverage table of docs/import.md). Both skip,
saying why, where torchvision or timm is not importable: `python tools/install_zoo.py` installs their
pure-Python code into .zoo-site (see docs/import.md, "The zoo tier").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402

TV, TIMM, WHY = zoo.load_zoo()
MODELS = {m.name: m for m in zoo.zoo_models(TV, TIMM)}
# small models whose exports hold the patterns the zoo needs most: SE blocks and mean heads (ReduceMean),
# hardswish, chunk and channel shuffle with a dynamic batch, channels-last layer norm and layer scale
FAST = ["tv:mobilenet_v3_small", "tv:shufflenet_v2_x0_5", "timm:convnext_atto", "timm:mixnet_s"]
SELECTED = sorted(MODELS) if os.environ.get("CNNCOMP_ZOO") else FAST


@pytest.mark.parametrize("name", SELECTED)
def test_zoo_model_round_trips(name, tmp_path):
    if name not in MODELS:
        pytest.skip(WHY or f"{name} is not in this torchvision/timm")
    result = zoo.round_trip(MODELS[name], tmp_path)
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.ok, f"{name} failed at {result.stage}: {result.error}"


# int8 as a user brings a zoo export: a plain residual net, channel shuffle, channels-last layer norm
INT8 = ["tv:resnet18", "tv:shufflenet_v2_x0_5", "timm:convnext_atto"]


@pytest.mark.parametrize("name", INT8)
def test_zoo_model_quantizes_to_int8_with_a_task_metric(name, tmp_path):
    """Exported, imported and compiled to int8 at default settings with `--metric top1`: it completes within
    its budget, the model written runs with the float32 model's output shape, and under 80% of the MACs in
    int8 the report says why in one line."""
    import numpy as np
    import onnxruntime as ort
    import torch

    import cnncomp
    from cnncomp.job import job_from_keywords
    from cnncomp.pipeline import compile_job
    from cnncomp.precision.int8_report import INT8_MACS_GOAL

    if name not in MODELS:
        pytest.skip(WHY or f"{name} is not in this torchvision/timm")
    torch.manual_seed(0)
    model = zoo.informative_weights(MODELS[name].build(), zoo.SIZE)
    zoo.export(model, torch.randn(1, 3, zoo.SIZE, zoo.SIZE), tmp_path / "m.onnx")
    cnncomp.import_onnx(tmp_path / "m.onnx", tmp_path / "m.cnn")
    samples = np.random.default_rng(1).standard_normal((16, 3, zoo.SIZE, zoo.SIZE)).astype(np.float32)
    job = job_from_keywords("compile", str(tmp_path / "m.cnn"), {
        "weights": str(tmp_path / "m.safetensors"), "opt_level": 1, "precision": "int8",
        "calibration": {cnncomp.load(str(tmp_path / "m.cnn")).inputs[0]: samples}, "metric": "top1"})
    result = compile_job(job)
    report = result.details
    assert report.ok, report.summary()
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: samples[:2]})
    assert got.shape == (2, 10) and np.isfinite(got).all()
    share = report.int8_macs_share
    assert share is not None
    assert (report.shortfall() is None) == (share >= INT8_MACS_GOAL), report.summary()
