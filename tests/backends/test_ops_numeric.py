"""Every registered op: the emitted ONNX model under ONNX Runtime (CPU) against the PyTorch reference.

Each case is a small spec; the helper emits it with seeded weights, checks
the model (full checker, strict shape inference), runs it on seeded inputs
and compares every output with the fp32 and the fp64 reference
(atol 1e-5, rtol 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cnncomp.emit.onnx import emit_onnx
from cnncomp.run.reference import run_reference
from cnncomp.ir.weights import init_weights
from cnncomp.frontend.cnn.loader import load_text
from cnncomp.errors import CnnError
from cnncomp.ops.registry import all_ops

X1 = "[N, 4, 16]"
X2 = "[N, 4, 10, 9]"
X3 = "[N, 4, 6, 7, 5]"


def chain(shape: str, stages: str) -> str:
    """A one-input, one-output spec: x -> stages."""
    return f"network case\ninput x: {shape}\ny = x -> {stages}\noutput y\n"


def spec(body: str, *inputs: str) -> str:
    """A spec with the given inputs and body; the body binds y (and more) and lists outputs."""
    decls = "".join(f"input {i}\n" for i in inputs)
    return f"network case\n{decls}{body}\n"


CASES = {
    # ---- conv ------------------------------------------------------------------
    "conv1d": chain(X1, "conv(6, k=3)"),
    "conv2d": chain(X2, "conv(6, k=3, p=1)"),
    "conv3d": chain(X3, "conv(6, k=3, p=1)"),
    "conv1d_same_even": chain(X1, "conv(5, k=4, p=same)"),
    "conv2d_same_even": chain(X2, "conv(5, k=(4, 2), p=same)"),
    "conv3d_same_even": chain(X3, "conv(3, k=2, p=same)"),
    "conv2d_same_stride": chain(X2, "conv(5, k=4, s=2, p=same)"),
    "conv2d_pads4": chain(X2, "conv(5, k=3, p=(1, 0, 2, 1))"),
    "conv3d_pads6": chain(X3, "conv(3, k=3, p=(1, 0, 2, 0, 1, 1))"),
    "conv2d_groups": chain(X2, "conv(6, k=3, g=2, p=1)"),
    "conv2d_depthwise": chain(X2, "conv(8, k=3, g=4, p=1)"),
    "conv1d_depthwise": chain(X1, "conv(4, k=5, g=4, p=2, bias=false)"),
    "conv2d_dilation": chain(X2, "conv(5, k=3, d=2, p=2)"),
    "conv3d_dilation_stride": chain(X3, "conv(5, k=2, d=(1, 2, 2), s=(1, 2, 1))"),
    "conv2d_stride_nobias": chain(X2, "conv(5, k=(3, 1), s=2, bias=false)"),
    "dwconv_block": chain(X2, "dwconv(k=3, p=1, m=2) -> sepconv(6, k=3, p=1)"),
    "conv_transpose1d": chain(X1, "conv_transpose(6, k=3, s=2, p=1, output_padding=1)"),
    "conv_transpose2d": chain(X2, "conv_transpose(6, k=3)"),
    "conv_transpose3d": chain(X3, "conv_transpose(4, k=2, s=2, bias=false)"),
    "conv_transpose2d_groups_dilation": chain(X2, "conv_transpose(6, k=3, s=2, p=2, d=2, g=2, output_padding=1)"),
    "conv_transpose2d_pads4": chain(X2, "conv_transpose(5, k=(3, 2), s=(2, 3), p=(1, 0, 2, 1))"),
    "conv_transpose2d_depthwise": chain(X2, "conv_transpose(4, k=4, s=2, p=1, g=4)"),
    # ---- deform_conv -------------------------------------------------------------
    "deform_conv": spec("off = x -> conv(18, k=3, p=1)\ny = x -> deform_conv(off, 5, k=3, p=1)\noutput y", "x: " + X2),
    "deform_conv_stride_dil": spec(
        "off = x -> conv(18, k=3, s=2, p=2, d=2)\ny = x -> deform_conv(off, 6, k=3, s=2, p=2, d=2, bias=false)\n"
        "output y", "x: " + X2),
    "deform_conv_groups": spec(
        "off = x -> conv(16, k=2, p=same)\ny = x -> deform_conv(off, 6, k=2, p=same, g=2, offset_groups=2)\n"
        "output y", "x: " + X2),
    "deformable_block": chain(X2, "deformable(5, 3)"),
    "deform_conv_mask": spec("off = x -> conv(18, k=3, p=1)\nm = x -> conv(9, k=3, p=1) -> sigmoid\n"
                             "y = x -> deform_conv(off, 5, k=3, p=1, mask=m)\noutput y", "x: " + X2),
    "deform_conv_mask_groups_nobias": spec(
        "off = x -> conv(16, k=2, s=2)\nm = x -> conv(8, k=2, s=2) -> sigmoid\n"
        "y = x -> deform_conv(off, 6, k=2, s=2, g=2, offset_groups=2, bias=false, mask=m)\noutput y", "x: " + X2),
    # ---- linear ----------------------------------------------------------------
    "linear": chain("[N, 12]", "linear(7)"),
    "linear_nobias": chain("[N, 12]", "linear(7, bias=false)"),
    "linear_rank3": chain(X1, "linear(5)"),
    "linear_rank3_nobias": chain(X1, "linear(5, bias=false)"),
    "flatten_linear": chain(X2, "gap -> flatten -> linear(3)"),
    # ---- normalization ---------------------------------------------------------
    "bn1d": chain(X1, "bn"),
    "bn2d": chain(X2, "bn(eps=1e-3)"),
    "bn3d": chain(X3, "bn"),
    "bn_features": chain("[N, 12]", "bn"),
    "gn1d": chain(X1, "gn(2)"),
    "gn2d": chain(X2, "gn(4)"),
    "gn3d": chain(X3, "gn(1, eps=1e-3)"),
    # ---- activations -------------------------------------------------------------
    "relu": chain(X2, "relu"),
    "sigmoid": chain(X2, "sigmoid"),
    "tanh": chain(X1, "tanh"),
    "silu": chain(X3, "silu"),
    "gelu": chain(X2, "gelu"),
    "gelu_tanh": chain(X1, "gelu(approximate=\"tanh\")"),
    "gelu_tanh3d": chain(X3, "gelu(approximate=\"tanh\")"),
    "selu": chain(X2, "selu"),
    "selu1d": chain(X1, "selu"),
    "mish": chain(X2, "mish"),
    "mish3d": chain(X3, "mish"),
    "hardswish3d": chain(X3, "hardswish"),
    "hardsigmoid1d": chain(X1, "hardsigmoid"),
    "hardswish": chain(X2, "hardswish"),
    "hardsigmoid": chain(X2, "hardsigmoid"),
    "elu": chain(X2, "elu"),
    "elu_alpha": chain(X1, "elu(alpha=0.5)"),
    "relu6": chain(X2, "relu6"),
    "leaky_relu": chain(X2, "leaky_relu(a=0.2)"),
    "prelu": chain(X2, "prelu"),
    "prelu_shared": chain(X2, "prelu(shared=true)"),
    "prelu1d": chain(X1, "prelu"),
    "prelu3d_shared": chain(X3, "prelu(shared=true)"),
    "prelu_features": chain("[N, 12]", "prelu"),
    "prelu_shape_channels": chain(X2, "prelu(shape=(4, 1, 1))"),
    "prelu_shape_rows": chain(X2, "prelu(shape=(10, 1))"),
    "prelu_shape_full": chain(X1, "prelu(shape=(4, 16))"),
    "prelu_shape_last": chain(X3, "prelu(shape=5)"),
    "rrelu": chain(X2, "rrelu"),
    "rrelu_bounds": chain(X1, "rrelu(lower=0.1, upper=0.5)"),
    "softmax": chain(X2, "softmax"),
    "softmax_last": chain(X2, "softmax(axis=-1)"),
    "log_softmax": chain("[N, 12]", "log_softmax"),
    "log_softmax_axis2": chain(X1, "log_softmax(axis=2)"),
    "activations_rank2": chain("[N, 12]", "relu6 -> hardswish -> silu -> gelu -> elu -> tanh"),
    # ---- max / min / avg / lp pooling --------------------------------------------
    "maxpool1d": chain(X1, "maxpool(k=2)"),
    "maxpool2d": chain(X2, "maxpool(k=3, s=2, p=1)"),
    "maxpool3d": chain(X3, "maxpool(k=2, s=1)"),
    "maxpool_ceil": chain("[N, 3, 5, 5]", "maxpool(k=2, s=2, p=1, ceil=true)"),
    "maxpool_ceil_drop": chain("[N, 3, 8, 8]", "maxpool(k=3, s=3, p=1, ceil=true)"),
    "maxpool_ceil_extra": chain("[N, 3, 10, 9]", "maxpool(k=3, s=2, ceil=true)"),
    "maxpool_ceil1d": chain(X1, "maxpool(k=3, s=2, p=1, ceil=true)"),
    "maxpool_ceil3d": chain(X3, "maxpool(k=2, s=2, ceil=true)"),
    "maxpool_dilation": chain(X2, "maxpool(k=2, s=1, d=2)"),
    "maxpool_dilation_bigpad": chain(X2, "maxpool(k=2, s=2, d=3, p=2)"),
    "maxpool_dilation_ceil": chain("[N, 3, 11, 11]", "maxpool(k=3, s=2, d=2, p=2, ceil=true)"),
    "maxpool_pads4": chain(X2, "maxpool(k=3, s=2, p=(1, 0, 0, 1))"),
    "maxpool_same_even": chain(X2, "maxpool(k=2, s=1, p=same)"),
    "maxpool_pads4_ceil": chain(X2, "maxpool(k=3, s=2, p=(1, 0, 0, 1), ceil=true)"),
    "maxpool_pads4_ceil_drop": chain("[N, 3, 6, 6]", "maxpool(k=3, s=3, p=(0, 0, 1, 1), ceil=true)"),
    "minpool": chain(X2, "minpool(k=2)"),
    "minpool_pad": chain(X2, "minpool(k=3, s=2, p=1)"),
    "minpool1d": chain(X1, "minpool(k=3, s=1, p=1)"),
    "minpool3d": chain(X3, "minpool(k=2)"),
    "avgpool1d": chain(X1, "avgpool(k=2)"),
    "avgpool2d": chain(X2, "avgpool(k=3, s=2, p=1)"),
    "avgpool2d_count_pad": chain(X2, "avgpool(k=3, s=2, p=1, count_pad=true)"),
    "avgpool3d": chain(X3, "avgpool(k=2, s=1, p=1, count_pad=true)"),
    "avgpool_ceil": chain("[N, 3, 5, 5]", "avgpool(k=2, s=2, p=1, ceil=true)"),
    "avgpool_ceil_count_pad": chain("[N, 3, 5, 5]", "avgpool(k=2, s=2, p=1, ceil=true, count_pad=true)"),
    "avgpool_ceil_count_pad_extra": chain("[N, 3, 10, 9]", "avgpool(k=3, s=2, p=1, ceil=true, count_pad=true)"),
    "avgpool_ceil_nopad_extra": chain("[N, 3, 10, 9]", "avgpool(k=3, s=2, ceil=true)"),
    "avgpool_ceil_drop_count_pad": chain("[N, 3, 8, 8]", "avgpool(k=3, s=3, p=1, ceil=true, count_pad=true)"),
    "avgpool_ceil1d_count_pad": chain(X1, "avgpool(k=3, s=2, p=1, ceil=true, count_pad=true)"),
    "avgpool_ceil3d": chain(X3, "avgpool(k=2, s=2, p=1, ceil=true, count_pad=true)"),
    "avgpool_pads4": chain(X2, "avgpool(k=3, s=2, p=(1, 0, 0, 1))"),
    "avgpool_pads4_count_pad": chain(X2, "avgpool(k=3, s=2, p=(1, 0, 0, 1), count_pad=true)"),
    "avgpool_pads4_ceil_count_pad": chain(X2, "avgpool(k=3, s=2, p=(1, 0, 0, 1), ceil=true, count_pad=true)"),
    "avgpool_pads4_ceil_drop": chain("[N, 3, 6, 6]", "avgpool(k=3, s=3, p=(0, 0, 1, 1), ceil=true, count_pad=true)"),
    "avgpool_same_even": chain(X2, "avgpool(k=2, s=1, p=same, count_pad=true)"),
    "lppool": chain(X2, "lppool(k=2)"),
    "lppool_norm1": chain(X2, "lppool(k=3, s=2, norm=1)"),
    "lppool1d_norm3": chain(X1, "lppool(k=3, s=1, norm=3)"),
    "lppool3d": chain(X3, "lppool(k=2)"),
    "lppool_pad_ceil": chain(X2, "lppool(k=3, s=2, p=1, ceil=true)"),
    "lppool1d_dilation": chain(X1, "lppool(k=3, s=2, d=2, norm=1)"),
    "lppool3d_ceil": chain(X3, "lppool(k=2, ceil=true, norm=3)"),
    "avgpool_dilation": chain(X2, "avgpool(k=2, s=1, d=2)"),
    "avgpool1d_dilation_count_pad": chain(X1, "avgpool(k=3, s=2, p=1, d=2, count_pad=true)"),
    "avgpool3d_dilation_ceil": chain(X3, "avgpool(k=2, s=2, p=1, d=2, ceil=true)"),
    # ---- global and k-max pooling --------------------------------------------------
    "gap1d": chain(X1, "gap"),
    "gap2d": chain(X2, "gap"),
    "gap3d": chain(X3, "gap"),
    "gmp1d": chain(X1, "gmp"),
    "gmp2d": chain(X2, "gmp"),
    "gmp3d": chain(X3, "gmp"),
    "kmaxpool1d": chain(X1, "kmaxpool(5)"),
    "kmaxpool2d": chain(X2, "kmaxpool(k=4)"),
    "kmaxpool_text": chain("[N, 8, 20]", "conv(6, k=3, p=1) -> relu -> kmaxpool(3) -> flatten -> linear(2)"),
    # ---- tensor layers -----------------------------------------------------------
    "flatten": chain(X2, "flatten"),
    "flatten_axis2": chain("[2, 4, 5, 6]", "flatten(axis=2)"),
    "flatten3d": chain(X3, "flatten"),
    "flatten_last": chain("[2, 3, 4, 5]", "flatten(axis=-1)"),
    "flatten_axis0": chain("[2, 3, 4, 5]", "flatten(axis=0)"),
    "dropout": chain(X2, "dropout(p=0.3)"),
    "identity": chain(X1, "identity"),
    "shuffle": chain("[N, 6, 5, 4]", "shuffle(3)"),
    "shuffle1d": chain(X1, "shuffle(2)"),
    "shuffle3d": chain(X3, "shuffle(2)"),
    "shuffle_features": chain("[N, 12]", "shuffle(4)"),
    "upsample_nearest1d": chain(X1, "upsample"),
    "upsample_nearest2d": chain(X2, "upsample(scale=(2, 3))"),
    "upsample_nearest3d": chain(X3, "upsample(scale=2)"),
    "upsample_nearest_frac": chain(X2, "upsample(scale=1.5)"),
    "upsample_linear1d": chain(X1, "upsample(mode=\"linear\")"),
    "upsample_linear2d": chain(X2, "upsample(scale=(2, 3), mode=\"linear\")"),
    "upsample_linear3d": chain(X3, "upsample(mode=\"linear\")"),
    "upsample_linear_frac": chain(X2, "upsample(scale=2.5, mode=\"linear\")"),
    "upsample_linear_down_to_one": chain("[N, 1, 2, 4]", "upsample(scale=0.5, mode=\"linear\")"),
    "upsample_linear_down": chain(X2, "upsample(scale=(0.5, 0.7), mode=\"linear\")"),
    "upsample_linear_align1d": chain(X1, "upsample(scale=3, mode=\"linear\", align_corners=true)"),
    "upsample_linear_align3d": chain(X3, "upsample(size=(9, 10, 3), mode=\"linear\", align_corners=true)"),
    "upsample_cubic": chain(X2, "upsample(mode=\"cubic\")"),
    "upsample_cubic_frac": chain(X2, "upsample(scale=(1.3, 0.6), mode=\"cubic\")"),
    "upsample_cubic_align": chain(X2, "upsample(size=(13, 4), mode=\"cubic\", align_corners=true)"),
    "upsample_size_nearest1d": chain(X1, "upsample(size=23)"),
    "upsample_size_nearest2d": chain(X2, "upsample(size=(7, 20))"),
    "upsample_size_linear2d": chain(X2, "upsample(size=(21, 5), mode=\"linear\")"),
    "upsample_nearest_frac13": chain(X2, "upsample(scale=1.3)"),
    "upsample_nearest_exact": chain(X2, "upsample(scale=1.5, mode=\"nearest-exact\")"),
    "upsample_nearest_exact_size": chain(X1, "upsample(size=23, mode=\"nearest-exact\")"),
    "upsample_nearest_exact_down": chain(X3, "upsample(size=(4, 3, 2), mode=\"nearest-exact\")"),
    "upsample_half_pixel_round_floor": chain(X2, "upsample(coordinates=\"half_pixel\", rounding=\"round_prefer_floor\")"),
    "upsample_half_pixel_default_rounding": chain(X1, "upsample(scale=3, coordinates=\"half_pixel\")"),
    "upsample_asymmetric_ceil": chain(X3, "upsample(size=(9, 10, 3), coordinates=\"asymmetric\", rounding=\"ceil\")"),
    "upsample_linear_asymmetric": chain(X2, "upsample(mode=\"linear\", coordinates=\"asymmetric\")"),
    "upsample_linear_asymmetric_down": chain(X2, "upsample(size=(4, 5), mode=\"linear\", coordinates=\"asymmetric\")"),
    "upsample_half_pixel_symmetric": chain(X2, "upsample(scale=1.5, mode=\"linear\", coordinates=\"half_pixel_symmetric\")"),
    "upsample_half_pixel_symmetric_nearest": chain(
        X1, "upsample(scale=2.5, coordinates=\"half_pixel_symmetric\", rounding=\"round_prefer_ceil\")"),
    # the output has the input's shape: ONNX Runtime copies the input, whatever the coordinate rule
    "upsample_same_size_is_a_copy": chain("[N, 4, 3, 2]", "upsample(scale=1.3, mode=\"linear\", coordinates=\"asymmetric\")"),
    "upsample_pytorch_half_pixel": chain(X2, "upsample(size=(1, 5), mode=\"linear\", coordinates=\"pytorch_half_pixel\")"),
    "pixel_shuffle": chain("[N, 12, 5, 4]", "pixel_shuffle(2)"),
    "pixel_shuffle3": chain("[N, 18, 3, 2]", "pixel_shuffle(3)"),
    "pixel_unshuffle": chain("[N, 3, 6, 4]", "pixel_unshuffle(2)"),
    "pixel_round_trip": chain("[N, 2, 6, 9]", "pixel_unshuffle(3) -> conv(18, k=1) -> pixel_shuffle(3)"),
    "slice_channels": chain(X2, "slice(1, 3)"),
    "slice_axis2": chain(X2, "slice(2, 7, axis=2)"),
    "slice1d_last": chain(X1, "slice(0, 5, axis=2)"),
    "pad1d": chain(X1, "pad(2)"),
    "pad2d": chain(X2, "pad(1, value=0.5)"),
    "pad2d_pads4": chain(X2, "pad((1, 0, 2, 3), value=-1.0)"),
    "pad3d": chain(X3, "pad((1, 0, 2))"),
    "pad1d_reflect": chain(X1, "pad((3, 1), mode=\"reflect\")"),
    "pad2d_reflect": chain(X2, "pad((1, 2, 3, 0), mode=\"reflect\")"),
    "pad3d_reflect": chain(X3, "pad(2, mode=\"reflect\")"),
    "pad1d_replicate": chain(X1, "pad(4, mode=\"replicate\")"),
    "pad2d_replicate": chain(X2, "pad((0, 2, 1, 3), mode=\"replicate\")"),
    "pad3d_replicate": chain(X3, "pad((1, 0, 2), mode=\"replicate\")"),
    "pad1d_circular": spec("y = x -> pad((2, 5), mode=\"circular\")\noutput y", "x: " + X1),
    "pad2d_circular": chain(X2, "pad((1, 2, 3, 0), mode=\"circular\")"),
    "pad3d_circular": chain(X3, "pad(1, mode=\"circular\")"),
    # ---- the layers of issue 17 -----------------------------------------------------
    "mean_spatial": chain(X2, "mean(axes=(2, 3))"),
    "mean_keepdims_is_gap": chain(X3, "mean(axes=(2, 3, 4), keepdims=true)"),
    "mean_channels": chain(X2, "mean(axes=1, keepdims=true)"),
    "mean_symbolic": chain("[N, 4, H, 6]", "mean(axes=(2, 3))"),
    "mean_negative_axes": chain(X1, "mean(axes=-1)"),
    "sum_channels": chain(X2, "sum(axes=1)"),
    "sum_spatial_keep": chain(X1, "sum(axes=2, keepdims=true)"),
    "split_channels": spec("a, b = x -> split((1, 3))\ny = concat(b, a -> tanh)\noutput y", "x: " + X2),
    "split_axis2_three": spec("p, q, r = x -> split((2, 5, 3), axis=2)\ny = concat(r, p, q, axis=2)\noutput y, q",
                              "x: " + X2),
    "split_one_part": chain(X1, "split((3, 1), part=1)"),
    "permute_channels_last": chain(X2, "permute((0, 2, 3, 1))"),
    "permute3d": chain(X3, "permute((0, 4, 1, 3, 2)) -> relu"),
    "layer_norm_channels": chain(X2, "layer_norm"),
    "layer_norm_channels3d": chain(X3, "layer_norm(axes=1, eps=1e-6)"),
    "layer_norm_trailing": chain(X2, "layer_norm(axes=(1, 2, 3))"),
    "layer_norm_last": chain(X1, "layer_norm(axes=-1)"),
    "layer_norm_features": chain("[N, 12]", "layer_norm(axes=1)"),
    "layer_norm_middle": chain(X3, "layer_norm(axes=(1, 3))"),
    "scale_shift": chain(X2, "scale -> shift"),
    "scale_shift1d": chain(X1, "shift -> scale"),
    "scale_features": chain("[N, 12]", "scale -> shift"),
    "clip": chain(X2, "clip(min=-0.5, max=0.25)"),
    "clip_min": chain(X1, "clip(min=0.1)"),
    "clip_max": chain(X3, "clip(max=0)"),
    "clip_no_bounds": chain(X2, "clip -> relu"),
    "hardsigmoid_paddle": chain(X2, "hardsigmoid(alpha=0.2, beta=0.5)"),
    "hardsigmoid_beta": chain(X1, "hardsigmoid(0.3, 0.4)"),
    "neg": chain(X2, "neg -> maxpool(k=2) -> neg"),
    "sub": spec("a = x -> conv(4, k=3, p=1)\ny = sub(a, x)\noutput y", "x: " + X2),
    "sub_broadcast": spec("s = x -> gap\ny = sub(s, x)\nz = x -> sub(s)\noutput y, z", "x: " + X3),
    "div_count_exclusive": spec("s = x -> avgpool(k=3, s=1, p=1, count_pad=true)\n"
                                "c = x -> relu -> shift -> avgpool(k=3, s=1, p=1, count_pad=true)\n"
                                "y = div(s, c)\noutput y", "x: " + X2),
    "div_broadcast_rows": spec("r = x -> mean(axes=3, keepdims=true) -> sigmoid\ny = div(x, r)\noutput y",
                               "x: " + X2),
    "mul_broadcast_both": spec("r = x -> mean(axes=3, keepdims=true)\nc = x -> mean(axes=2, keepdims=true)\n"
                               "y = r * c\nz = r + c\noutput y, z", "x: " + X2),
    # ---- merges ------------------------------------------------------------------
    "add": spec("a = x -> conv(4, k=3, p=1)\ny = a + x\noutput y", "x: " + X2),
    "add3": spec("a = x -> relu\nb = x -> tanh\ny = add(a, b, x)\noutput y", "x: " + X1),
    "add_broadcast": spec("s = x -> gap\ny = x + s\noutput y", "x: " + X3),
    "mul_se": spec("s = x -> gap -> conv(4, k=1) -> sigmoid\ny = x * s\noutput y", "x: " + X2),
    "mul3": spec("a = x -> sigmoid\nb = x -> tanh\ny = mul(a, b, x)\noutput y", "x: " + X1),
    "concat": spec("a = x -> conv(3, k=3, p=1)\ny = concat(x, a)\noutput y", "x: " + X2),
    "concat_axis2": spec("a = x -> relu\ny = concat(x, a, x -> tanh, axis=2)\noutput y", "x: " + X1),
    "two_inputs": spec("a = x -> conv(4, k=1)\ny = concat(a, z)\nw = y -> gap\noutput y, w",
                       "x: " + X2, "z: " + X2),
    "se_block": chain(X2, "conv(16, k=1) -> se(r=4)"),
    "inception_block": chain("[N, 8, 12, 12]", "inception(4, 3, 4, 2, 3, 3)"),
    "shuffle_unit": chain("[N, 12, 8, 8]", "shuffle_unit(12, 3)"),
    "dense_layer": chain("[N, 8, 6, 6]", "dense_layer(4)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_reference(case, helpers):
    result = helpers.compare(CASES[case])
    names = [n.name for n in result.model.graph.node]
    layers = {layer.name for layer in result.graph.layers() if layer.op != "input"}
    assert layers <= set(names), "every layer names one node"


def test_every_registered_op_has_a_case():
    used = set()
    for text in CASES.values():
        used |= {layer.op for layer in load_text(text, "case.cnn").layers()}
    missing = set(all_ops()) - used
    assert not missing, f"ops without a numeric case: {sorted(missing)}"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_resnet_stem_several_seeds(seed, helpers):
    text = chain("[N, 3, 20, 20]", "conv(8, k=7, s=2, p=3, bias=false) -> bn -> relu -> "
                                   "maxpool(k=3, s=2, p=1) -> bottleneck(4, 16) -> basic_block(16, stride=2) "
                                   "-> gap -> flatten -> linear(5) -> softmax")
    helpers.compare(text, seed=seed)


def test_float64_spec_runs_in_double(helpers):
    # ONNX Runtime's CPU provider has double kernels for these ops (not for Conv).
    text = chain("float64[N, 4, 6, 6]", "bn -> prelu -> maxpool(k=2) -> relu6 -> pad(1) -> flatten -> "
                                        "linear(5) -> log_softmax")
    graph = load_text(text, "case.cnn")
    weights = init_weights(graph, 0)
    model = emit_onnx(graph, weights)
    helpers.assert_valid_onnx(model)
    inputs = helpers.random_inputs(graph)
    got = helpers.ort_run(model, inputs)["y"]
    want = run_reference(graph, weights, inputs, dtype=torch.float64)["y"]
    helpers.assert_close(got, want, 1e-12, 1e-10, "float64")


def test_float16_spec(helpers):
    text = chain("float16[N, 4, 8, 8]", "conv(6, k=3, p=1) -> bn -> relu -> avgpool(k=2) -> gelu -> "
                                        "upsample(mode=\"linear\") -> gn(2)")
    graph = load_text(text, "case.cnn")
    weights = init_weights(graph, 0)
    model = emit_onnx(graph, weights)
    helpers.assert_valid_onnx(model)
    assert all(t.data_type == 10 for t in model.graph.initializer if t.name.endswith((".weight", ".bias")))
    inputs = helpers.random_inputs(graph, scale=1.0)
    got = helpers.ort_run(model, inputs)["y"]
    want = run_reference(graph, weights, inputs)["y"]
    assert got.dtype == np.float16 and got.shape == want.shape
    # float16 keeps 11 bits: the fp16 model is compared with the fp32 reference at fp16 resolution.
    np.testing.assert_allclose(got.astype(np.float32), want, atol=2e-2, rtol=2e-2)


POOL_GRID = [(size, k, s, p, ceil) for size in (5, 6, 7, 8) for k, s, p in ((2, 2, 1), (3, 2, 1), (3, 3, 1), (2, 3, 0),
                                                                          (3, 1, 1), (4, 3, 2)) for ceil in (False, True)]


@pytest.mark.parametrize("count_pad", [False, True])
def test_pool_references_follow_pytorch(count_pad):
    """The spec's shape rule and the avgpool/maxpool references agree with F.avg_pool2d/F.max_pool2d (the contract)."""
    import torch.nn.functional as F

    ops = all_ops()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 8, 8)))
    for size, k, s, p, ceil in POOL_GRID:
        xs = x[:, :, :size, :size]
        attrs = ops["avgpool"].normalize({"k": k, "s": s, "p": p, "ceil": ceil, "count_pad": count_pad},
                                         [tuple(xs.shape)])
        shape = ops["avgpool"].infer_shape(attrs, [tuple(xs.shape)])
        want = F.avg_pool2d(xs, k, s, p, ceil_mode=ceil, count_include_pad=count_pad)
        got = ops["avgpool"].torch_ref(attrs, [xs], {})
        assert shape[2:] == tuple(want.shape[2:]), (size, k, s, p, ceil)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
        want = F.max_pool2d(xs, k, s, p, ceil_mode=ceil)
        got = ops["maxpool"].torch_ref(dict(attrs, dilation=(1, 1)), [xs], {})
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@st.composite
def _pool_specs(draw):
    op = draw(st.sampled_from(["maxpool", "avgpool"]))
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 4))
    h, w = draw(st.integers(k, 11)), draw(st.integers(k, 11))
    pads = tuple(draw(st.integers(0, k // 2)) for _ in range(4))
    args = f"k={k}, s={s}, p={pads}, ceil={draw(st.sampled_from(['true', 'false']))}"
    if op == "avgpool":
        args += f", count_pad={draw(st.sampled_from(['true', 'false']))}"
    return chain(f"[N, 2, {h}, {w}]", f"{op}({args})")


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # `helpers` holds no state
@given(text=_pool_specs())
def test_pooling_lowering_on_random_windows(text, helpers):
    """Max and average pooling, any window, padding and ceil mode: ONNX Runtime agrees with the reference."""
    try:
        load_text(text, "case.cnn")
    except CnnError:
        assume(False)
    helpers.compare(text, float64=False)
