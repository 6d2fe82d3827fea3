"""Bugs the differential fuzzer (cnncomp/verification/fuzz.py) found, each pinned by its smallest case."""

import numpy as np
import pytest
import torch

from cnncomp.errors import CnnError
from cnncomp.frontend.cnn.loader import load_text
from cnncomp.ir.weights import init_weights
from cnncomp.run.reference import run_reference


def chain(shape: str, stages: str) -> str:
    return f"network case\ninput x: {shape}\ny = x -> {stages}\noutput y\n"


@pytest.mark.parametrize("text", [
    # a padded conv's border outputs are all its bias: ties for kmaxpool
    chain("[N, 6, 16]", "conv(4, k=2, s=2, p=2) -> kmaxpool(6)"),
    chain("[N, 4, 2, 5, 5]", "pad((0, 0, 2)) -> kmaxpool(2)"),
])
def test_kmaxpool_breaks_ties_by_position_as_onnx_topk(text, helpers):
    helpers.compare(text, atol=1e-5, rtol=1e-4)


def test_kmaxpool_reference_keeps_the_first_of_equal_values():
    graph = load_text(chain("[1, 1, 5]", "kmaxpool(2)"), "t.cnn")
    x = np.array([[[1.0, 3.0, 1.0, 2.0, 3.0]]], np.float32)
    y = run_reference(graph, {}, {"x": x}, dtype=torch.float64)["y"]
    assert y.tolist() == [[[3.0, 3.0]]]
    x = np.array([[[2.0, 1.0, 2.0, 0.0, 2.0]]], np.float32)  # three 2s: the first two, in order
    assert run_reference(graph, {}, {"x": x})["y"].tolist() == [[[2.0, 2.0]]]


@pytest.mark.parametrize("shape, scale", [("[N, 2, 2, 6]", "(0.5, 0.5)"), ("[N, 2, 3, 6]", "(0.5, 0.5)"),
                                          ("[N, 8, 3, 3, 4]", "0.5"), ("[N, 2, 3]", "0.34")])
def test_linear_resize_to_one_position_matches_pytorch(shape, scale, helpers):
    # ONNX's pytorch_half_pixel maps an output of length 1 to 0; F.interpolate does not
    helpers.compare(chain(shape, f'upsample(scale={scale}, mode="linear")'), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("stages", ["maxpool(2, s=(3, 2, 1), p=1, d=3)", "maxpool(2, s=1, p=1, d=3)"])
def test_a_dilated_pool_window_that_reads_only_padding_is_an_error(stages):
    # on 2 positions padded by 1, taps 3 apart at -1 and 2 both miss: a max over nothing
    with pytest.raises(CnnError, match="the window at output position 0 of spatial dim 1 reads only padding"):
        load_text(chain("[N, 2, 3, 2, 2]", stages), "t.cnn")


def test_a_dilated_pool_window_that_reaches_the_input_is_fine(helpers):
    helpers.compare(chain("[N, 2, 9, 9]", "maxpool(2, s=1, p=1, d=3)"), atol=1e-5, rtol=1e-4)


def test_group_norm_needs_a_positive_eps():
    with pytest.raises(CnnError, match="gn: eps must be positive, got -0.5"):
        load_text(chain("[N, 4, 5]", "gn(2, eps=-0.5)"), "t.cnn")


def test_bottleneck_at_full_rank_on_a_conv_with_more_outputs_than_its_unfolding_has_rows():
    # conv 1 -> 18 channels, k=3: the mode-0 unfolding is 18 x 9, so the output rank is at most 9
    from cnncomp.passes import PassContext, parse_pass_list, run_pipeline
    from cnncomp.verification.harness import make_inputs

    graph = load_text(chain("[N, 1, 7, 7]", "conv(18, k=3)"), "t.cnn")
    weights = init_weights(graph, 0)
    ctx = PassContext(graph.copy(), dict(weights))
    run_pipeline(ctx, parse_pass_list("bottleneck(ratio=1.0, always=1)"), lint=True)
    assert [l.attrs.get("out") for l in ctx.graph.layers() if l.op == "conv"] == [1, 9, 18]
    feeds = make_inputs(graph, 0)
    want = run_reference(graph, weights, feeds, dtype=torch.float64)["y"]
    got = run_reference(ctx.graph, ctx.weights, feeds, dtype=torch.float64)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_lppool_padding_past_its_kernel_runs_under_onnx_runtime(helpers):
    # a dilated window allows padding up to half its effective size; ONNX Runtime's LpPool wants
    # pads below the kernel itself: the zeros are padded by a Pad node first (the same sum)
    helpers.compare(chain("[N, 1, 2, 2, 3]", "lppool((1, 1, 2), s=(1, 1, 2), norm=1, p=(0, 0, 2, 0, 0, 1), d=3)"),
                    atol=1e-5, rtol=1e-4)


def test_conv_transpose_output_padding_at_the_stride_is_a_located_error():
    # PyTorch takes output_padding below the dilation too; ONNX Runtime's ConvTranspose does not
    with pytest.raises(CnnError, match="output_padding 1 must be smaller than the stride 1") as err:
        load_text(chain("[N, 1, 5]", "conv_transpose(1, 1, d=2, output_padding=1)"), "t.cnn")
    assert (err.value.loc.line, err.value.loc.col) == (3, 10)
