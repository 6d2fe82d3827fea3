"""The decoder layers against the torch.nn modules they are named after, in 1-D, 2-D and 3-D.

A spec layer with the module's weights (copied into the layer's weight names) must give the
module's output: same shape, values within float64 round-off. The ONNX side of the same layers is
checked against this reference in test_ops_numeric.py and against ONNX's own cases in
test_onnx_conformance.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnncomp.frontend.cnn.loader import load_text
from cnncomp.run.reference import run_reference

SHAPES = {1: (2, 4, 9), 2: (2, 4, 7, 6), 3: (2, 4, 5, 4, 6)}


def run_layer(stage: str, x: torch.Tensor, module: nn.Module | None = None) -> np.ndarray:
    dims = ", ".join(str(d) for d in x.shape)
    graph = load_text(f"network n\ninput x: [{dims}]\ny = x -> {stage} as layer\noutput y\n", "n.cnn")
    weights = {f"layer.{k}": v.detach().numpy() for k, v in (module.state_dict() if module else {}).items()}
    return run_reference(graph, weights, {"x": x.numpy()}, dtype=torch.float64)["y"]


def assert_same(got: np.ndarray, want: torch.Tensor) -> None:
    want = want.detach().numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("args,stage", [
    (dict(kernel_size=3), "conv_transpose(6, k=3)"),
    (dict(kernel_size=3, stride=2, padding=1, output_padding=1), "conv_transpose(6, k=3, s=2, p=1, output_padding=1)"),
    (dict(kernel_size=2, stride=2, groups=2, bias=False), "conv_transpose(6, k=2, s=2, g=2, bias=false)"),
    (dict(kernel_size=3, stride=3, padding=2, dilation=2, output_padding=1),
     "conv_transpose(6, k=3, s=3, p=2, d=2, output_padding=1)"),
])
def test_conv_transpose_is_nn_conv_transpose(rank, args, stage):
    torch.manual_seed(rank)
    module = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[rank](4, 6, **args).double()
    x = torch.randn(SHAPES[rank], dtype=torch.float64)
    assert_same(run_layer(stage, x, module), module(x))


@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_and_unshuffle_are_the_modules(r):
    x = torch.randn(2, 2 * r * r, 3, 5, dtype=torch.float64)
    assert_same(run_layer(f"pixel_shuffle({r})", x), nn.PixelShuffle(r)(x))
    y = torch.randn(2, 3, 2 * r, 4 * r, dtype=torch.float64)
    assert_same(run_layer(f"pixel_unshuffle({r})", y), nn.PixelUnshuffle(r)(y))


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_pad_modes_are_f_pad(rank, mode):
    x = torch.randn(SHAPES[rank], dtype=torch.float64)
    pads = (1, 3, 2, 0, 0, 2)[:2 * rank]  # begins then ends, per spatial dim
    torch_pads = [v for i in reversed(range(rank)) for v in (pads[i], pads[i + rank])]
    text = "(" + ", ".join(map(str, pads)) + ")"
    assert_same(run_layer(f'pad({text}, mode="{mode}")', x), F.pad(x, torch_pads, mode=mode))


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("stage,kwargs", [
    ('upsample(scale=1.7)', dict(scale_factor=1.7, mode="nearest")),
    ('upsample(scale=0.5, mode="linear")', dict(scale_factor=0.5, mode="linear")),
    ('upsample(scale=2.5, mode="linear", align_corners=true)', dict(scale_factor=2.5, mode="linear",
                                                                    align_corners=True)),
])
def test_upsample_is_nn_upsample(rank, stage, kwargs):
    x = torch.randn(SHAPES[rank], dtype=torch.float64)
    kwargs = dict(kwargs)
    mode = {"nearest": "nearest", "linear": ("linear", "bilinear", "trilinear")[rank - 1]}[kwargs.pop("mode")]
    assert_same(run_layer(stage, x), nn.Upsample(mode=mode, **kwargs)(x))


def test_upsample_cubic_and_sizes_are_nn_upsample():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    assert_same(run_layer('upsample(size=(9, 4), mode="cubic")', x), nn.Upsample(size=(9, 4), mode="bicubic")(x))
    assert_same(run_layer('upsample(scale=1.5, mode="cubic", align_corners=true)', x),
                nn.Upsample(scale_factor=1.5, mode="bicubic", align_corners=True)(x))
    assert_same(run_layer('upsample(size=(1, 1), mode="linear")', x),
                nn.Upsample(size=(1, 1), mode="bilinear")(x))


@pytest.mark.parametrize("stage,module", [
    ("selu", nn.SELU()), ("mish", nn.Mish()), ("hardswish", nn.Hardswish()), ("hardsigmoid", nn.Hardsigmoid()),
    ("silu", nn.SiLU()), ('gelu(approximate="tanh")', nn.GELU(approximate="tanh")), ("gelu", nn.GELU()),
])
def test_activations_are_the_modules(stage, module):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64) * 4
    assert_same(run_layer(stage, x), module(x))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_avgpool_and_lppool_are_the_modules_where_pytorch_has_them(rank):
    x = torch.randn(SHAPES[rank], dtype=torch.float64)
    avg = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[rank](2, 2, 1, ceil_mode=True, count_include_pad=False)
    assert_same(run_layer("avgpool(k=2, s=2, p=1, ceil=true)", x), avg(x))
    if rank < 3:  # nn.LPPool3d is newer than some PyTorch versions; PyTorch's lp_pool has no padding
        # PyTorch raises x (not |x|) to the power, equal for non-negative inputs; and in ceil mode it
        # scales a partial last window by k / count, where lppool (as ONNX) sums what is there
        lp = {1: nn.LPPool1d, 2: nn.LPPool2d}[rank](2, 3, stride=2)
        y = x.abs()
        assert_same(run_layer("lppool(k=3, s=2, norm=2)", y), lp(y))


def test_flatten_negative_axis_is_numpys():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    assert run_layer("flatten(axis=-1)", x).shape == (24, 5)
    assert run_layer("flatten(axis=-4)", x).shape == (1, 120)


# ---- the layers of issue 17 --------------------------------------------------------------------

@pytest.mark.parametrize("rank", [1, 2, 3])
def test_layer_norm_over_trailing_axes_is_nn_layer_norm(rank):
    torch.manual_seed(rank)
    x = torch.randn(SHAPES[rank], dtype=torch.float64) * 3 + 1
    module = nn.LayerNorm(x.shape[2:], eps=1e-6).double()
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
    axes = "(" + ", ".join(str(a) for a in range(2, x.dim())) + ")" if rank > 1 else "2"
    assert_same(run_layer(f"layer_norm(axes={axes}, eps=1e-6)", x, module), module(x))


def test_layer_norm_over_channels_is_convnext_layer_norm_2d():
    # timm's LayerNorm2d: channels last, nn.LayerNorm over C, channels first again
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    module = nn.LayerNorm(6, eps=1e-6).double()
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
    want = module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert_same(run_layer("layer_norm(axes=1, eps=1e-6)", x, module), want)
    assert_same(run_layer("permute((0, 2, 3, 1)) -> layer_norm(axes=-1, eps=1e-6)", x, module),
                module(x.permute(0, 2, 3, 1)))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_reductions_are_tensor_mean_and_sum(rank):
    x = torch.randn(SHAPES[rank], dtype=torch.float64)
    spatial = tuple(range(2, x.dim()))
    text = "(" + ", ".join(map(str, spatial)) + ")" if rank > 1 else "2"
    assert_same(run_layer(f"mean(axes={text})", x), x.mean(spatial))
    assert_same(run_layer(f"mean(axes={text}, keepdims=true)", x), nn.AdaptiveAvgPool1d(1)(x) if rank == 1
                else x.mean(spatial, keepdim=True))
    assert_same(run_layer("sum(axes=(1, -1), keepdims=true)", x), x.sum((1, -1), keepdim=True))


def test_split_parts_are_torch_split_and_chunk():
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    for k, part in enumerate(torch.split(x, [3, 5], dim=1)):
        assert_same(run_layer(f"split((3, 5), part={k})", x), part)
    for k, part in enumerate(x.chunk(5, dim=3)):
        assert_same(run_layer(f"split((1, 1, 1, 1, 1), axis=-1, part={k})", x), part)


@pytest.mark.parametrize("stage,module", [
    ("clip(min=0, max=6)", nn.ReLU6()), ("clip(min=-1, max=1)", nn.Hardtanh()), ("clip(min=0)", nn.ReLU()),
    ("hardsigmoid(alpha=1.0 / 6, beta=0.5)", nn.Hardsigmoid()), ("neg -> neg", nn.Identity()),
])
def test_clip_hardsigmoid_and_neg_are_the_modules(stage, module):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64) * 4
    assert_same(run_layer(stage, x), module(x))


def test_hardsigmoid_with_onnx_slope():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64) * 4
    assert_same(run_layer("hardsigmoid(alpha=0.2, beta=0.5)", x), (0.2 * x + 0.5).clamp(0, 1))


def test_prelu_per_channel_shape_is_nn_prelu():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    module = nn.PReLU(4).double()
    with torch.no_grad():
        module.weight.uniform_(0.1, 0.4)
    graph = load_text("network n\ninput x: [2, 4, 7, 6]\ny = x -> prelu(shape=(4, 1, 1)) as layer\noutput y\n", "n.cnn")
    weights = {"layer.weight": module.weight.detach().numpy().reshape(4, 1, 1)}
    assert_same(run_reference(graph, weights, {"x": x.numpy()}, dtype=torch.float64)["y"], module(x))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_upsample_nearest_exact_is_nn_upsample(rank):
    x = torch.randn(SHAPES[rank], dtype=torch.float64)
    assert_same(run_layer('upsample(scale=1.5, mode="nearest-exact")', x),
                nn.Upsample(scale_factor=1.5, mode="nearest-exact")(x))
