"""fold-bn: batch norms folded into adjacent convs and linears, exactly."""

import numpy as np
import pytest

from cnncomp.passes.exact.fold_bn import bn_scale_shift

H = "network n\ninput x: [N, 8, 12, 12]\n"
FP32 = 1e-5  # float32 arithmetic over a few layers, relative to the output scale


def test_conv_then_bn_folds_into_the_conv(run_passes):
    opt = run_passes(H + "y = x -> conv(16, k=3, p=1, bias=false) -> bn -> relu\noutput y\n", "fold-bn")
    assert opt.rewrites("fold-bn") == 1
    assert opt.ops() == ["conv", "relu"]
    assert opt.graph.layer("y.0").attrs["bias"] is True
    assert opt.max_error() < FP32


def test_linear_then_bn(run_passes):
    opt = run_passes("network n\ninput x: [N, 20]\ny = x -> linear(12) -> bn -> relu\noutput y\n", "fold-bn")
    assert (opt.rewrites("fold-bn"), opt.ops()) == (1, ["linear", "relu"])
    assert opt.max_error() < FP32


def test_bn_then_unpadded_conv_folds_into_the_conv(run_passes):
    opt = run_passes(H + "y = x -> relu -> bn -> conv(6, k=3, g=2) -> relu\noutput y\n", "fold-bn")
    assert (opt.rewrites("fold-bn"), opt.ops()) == (1, ["relu", "conv", "relu"])
    assert opt.max_error() < FP32


def test_bn_then_linear(run_passes):
    opt = run_passes("network n\ninput x: [N, 20]\ny = x -> relu -> bn -> linear(5)\noutput y\n", "fold-bn")
    assert (opt.rewrites("fold-bn"), opt.ops()) == (1, ["relu", "linear"])
    assert opt.max_error() < FP32


def test_linear_on_a_rank_3_tensor_keeps_its_bn(run_passes):
    # linear acts on the last axis, bn on axis 1: folding would scale the wrong axis (issue 10: 1.37 off)
    opt = run_passes("network lb\ninput x: [N, 6, 10]\na = x -> linear(6) -> bn\noutput a\n", "fold-bn")
    assert (opt.rewrites("fold-bn"), opt.ops()) == (0, ["linear", "bn"])
    assert any("along axis 2" in line and "axis 1" in line for line in opt.log)
    assert opt.max_error() < FP32


def test_bn_before_a_linear_on_a_rank_3_tensor_stays(run_passes):
    opt = run_passes("network lb\ninput x: [N, 6, 6]\na = x -> relu -> bn -> linear(4)\noutput a\n", "fold-bn")
    assert (opt.rewrites("fold-bn"), opt.ops()) == (0, ["relu", "bn", "linear"])
    assert opt.max_error() < FP32


def test_refuses_when_the_conv_output_has_other_users(run_passes):
    text = H + "c = x -> conv(8, k=3, p=1)\ny = c -> bn\nz = c + y\noutput z\n"
    opt = run_passes(text, "fold-bn")
    assert opt.rewrites("fold-bn") == 0
    assert "bn" in opt.ops()
    assert any("has other users" in line for line in opt.log)
    assert opt.max_error() < FP32


def test_refuses_bn_before_a_padded_conv(run_passes):
    opt = run_passes(H + "y = x -> relu -> bn -> conv(8, k=3, p=1)\noutput y\n", "fold-bn")
    assert opt.rewrites("fold-bn") == 0
    assert any("pads its input" in line for line in opt.log)


@pytest.mark.parametrize("spec", ["specs/resnet18.cnn", "specs/mobilenet_v2.cnn", "specs/densenet121.cnn"])
def test_no_batch_norm_left_on_real_specs(run_passes, spec):
    opt = run_passes(spec, "fold-bn")
    remaining = [l.name for l in opt.graph.layers() if l.op == "bn"]
    if spec.endswith("densenet121.cnn"):
        # Pre-activation: norm1, the transitions' norm and norm5 read a concat or a relu-less path and feed a
        # relu, so there is no conv next to them to fold into; every norm2 and norm0 folds.
        assert remaining and all(name.endswith(("norm1", ".norm", "norm5")) for name in remaining)
        assert not any(name.endswith(("norm2", "norm0")) for name in remaining)
    else:
        assert remaining == []
    assert opt.max_error() < 1e-4  # deep networks: float32 error grows with depth


def test_scale_shift_formula():
    class Ctx:
        weights = {"b.weight": np.array([2.0]), "b.bias": np.array([1.0]), "b.running_mean": np.array([3.0]),
                   "b.running_var": np.array([3.0])}

    s, t = bn_scale_shift(Ctx, "b", 1.0)
    assert s == pytest.approx([1.0]) and t == pytest.approx([-2.0])  # 2/sqrt(4) = 1; 1 - 3*1 = -2


def test_folded_weights_leaving_the_float16_range_are_reported():
    from cnncomp.ir.weights import init_weights
    from cnncomp.frontend.cnn.loader import load_text
    from cnncomp.passes import PassContext, parse_pass_list, run_pipeline

    graph = load_text(H + "y = x -> conv(4, k=3, bias=false) as c -> bn as b\noutput y\n", "t.cnn")
    weights = init_weights(graph, 0)
    weights["b.weight"] = weights["b.weight"] * 1e6  # scales far beyond 65504 once folded
    ctx = PassContext(graph.copy(), weights)
    run_pipeline(ctx, parse_pass_list("fold-bn"))
    assert ctx.warnings == []
    assert len(ctx.fp16_warnings) == 1 and "exceed the float16 range" in ctx.fp16_warnings[0]
    assert "most in c" in ctx.fp16_warnings[0]


@pytest.mark.parametrize("stage", ["conv_transpose(12, k=3, s=2, p=1, output_padding=1, bias=false)",
                                   "conv_transpose(12, k=2, s=2, g=4)",
                                   "conv_transpose(6, k=(3, 1), d=2, g=2)"])
def test_conv_transpose_then_bn_scales_the_output_axis_per_group(run_passes, stage):
    opt = run_passes(H + f"y = x -> {stage} -> bn -> relu\noutput y\n", "fold-bn")
    assert (opt.rewrites("fold-bn"), opt.ops()) == (1, ["conv_transpose", "relu"])
    assert opt.max_error() < FP32


def test_bn_before_conv_transpose_is_not_folded(run_passes):
    opt = run_passes(H + "y = x -> relu -> bn -> conv_transpose(4, k=2, s=2)\noutput y\n", "fold-bn")
    assert (opt.rewrites("fold-bn"), opt.ops()) == (0, ["relu", "bn", "conv_transpose"])
    assert opt.max_error() < FP32
