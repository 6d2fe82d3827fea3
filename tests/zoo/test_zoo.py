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
