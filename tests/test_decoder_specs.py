"""The decoder and segmentation specs (unet, espcn, deeplabv3_resnet50) against their PyTorch originals.

tests/decoder_models.py holds hand-written copies of the originals (plain torch.nn, their module
names). For each spec: the parameter count is the original's (DeepLabV3: torchvision's documented
42,004,074 with the aux classifier, 39,638,869 without); the spec asks for exactly the original's
state_dict keys and shapes; and with the original's seeded weights loaded, the spec compiled at -O1
and run under ONNX Runtime computes what the eager model computes: compiled once with symbolic
height and width, run at two reduced sizes each (one not square), batch 2.

Tolerance: |ort - eager| <= 1e-4 * max|eager| + 1e-4 * |eager| elementwise, eager in float64.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cnncomp  # noqa: E402
from cnncomp.analysis.summary import summarize  # noqa: E402
from cnncomp.ir.weights import expected_weights  # noqa: E402
from cnncomp.run.session import Session  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decoder_models as models  # noqa: E402

SPECS = Path(__file__).resolve().parents[1] / "specs"
NAMES = ("unet", "espcn", "deeplabv3_resnet50")
# reduced input sizes, square and not (U-Net: multiples of 16; DeepLabV3 any, not only multiples of 8)
SIZES = {"unet": [(32, 32), (48, 64)], "espcn": [(12, 12), (10, 17)], "deeplabv3_resnet50": [(48, 48), (37, 50)]}
CHANNELS = {"unet": 3, "espcn": 1, "deeplabv3_resnet50": 3}
TOL = 1e-4


@pytest.fixture(scope="module")
def originals():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = models.BUILDERS[name](seed=0)
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_the_originals(name):
    summary = summarize(cnncomp.load(SPECS / f"{name}.cnn"))
    assert summary.total_params == models.PARAMS[name]


def test_deeplabv3_counts_with_and_without_the_aux_classifier():
    graph = cnncomp.load(SPECS / "deeplabv3_resnet50.cnn")
    summary = summarize(graph)
    aux = sum(row.params for row in summary.rows if row.name.startswith("aux_classifier."))
    assert (summary.total_params, summary.total_params - aux) == (42_004_074, 39_638_869)
    assert graph.output_names == ["out", "aux"]
    # the ASPP rates run in parallel and the backbone's dilated convs sit on residual branches:
    # no stacked-rates gridding warning
    assert not [w for w in summary.warnings if w.code == "gridding"]


@pytest.mark.parametrize("name", NAMES)
def test_spec_weights_are_the_originals_keys(originals, name):
    state = {k: tuple(v.shape) for k, v in originals(name).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    graph = cnncomp.load(SPECS / f"{name}.cnn")
    assert {k: tuple(s.shape) for k, s in expected_weights(graph).items()} == state


@pytest.mark.parametrize("name", NAMES)
def test_compiled_spec_computes_the_original(originals, name, tmp_path):
    from safetensors.torch import save_file

    model = originals(name)
    weights = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")},
              str(weights))
    # compiled once with symbolic H and W, run at each size
    onnx_model = cnncomp.compile(SPECS / f"{name}.cnn", opt_level=1, weights=str(weights))
    session = Session(onnx_model, "cpu")
    for height, width in SIZES[name]:
        x = torch.randn(2, CHANNELS[name], height, width, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            eager = model.double()(x.double())
        model.float()
        eager = eager if isinstance(eager, tuple) else (eager,)
        got = session.run({session.input_names[0]: x.numpy()})
        assert len(got) == len(eager)
        for (out_name, actual), want in zip(got.items(), eager):
            want = want.numpy()
            assert actual.shape == want.shape, out_name
            bound = TOL * np.abs(want).max() + TOL * np.abs(want)
            assert (np.abs(actual - want) <= bound).all(), \
                f"{name} {out_name} at {height}x{width}: max err {np.abs(actual - want).max():.3g}"
