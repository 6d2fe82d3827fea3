"""fold-scale-shift: per-channel scale and shift layers folded into adjacent convs and linears, exactly."""

import pytest

from cnncomp.passes.manager import level_pipeline

H = "network n\ninput x: [N, 8, 12, 12]\n"
FP32 = 1e-5  # float32 arithmetic over a few layers, relative to the output scale


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scale_and_shift_after_a_conv_fold_into_it(run_passes, seed):
    opt = run_passes(H + "y = x -> conv(16, k=3, p=1, bias=false) -> scale -> shift -> relu\noutput y\n",
                     "fold-scale-shift", seed=seed)
    assert opt.rewrites("fold-scale-shift") == 2
    assert opt.ops() == ["conv", "relu"]
    assert opt.graph.layer("y.0").attrs["bias"] is True
    assert opt.max_error() < FP32


def test_after_a_grouped_conv_transpose_and_a_linear(run_passes):
    opt = run_passes(H + "y = x -> conv_transpose(6, k=3, s=2, g=2) -> shift -> scale\n"
                     "z = x -> gap -> flatten -> linear(5) -> scale -> shift\noutput y, z\n", "fold-scale-shift")
    assert (opt.rewrites("fold-scale-shift"), opt.ops()) == (4, ["conv_transpose", "gap", "flatten", "linear"])
    assert opt.max_error() < FP32


def test_before_a_conv(run_passes):
    # a scale folds into a padded conv (its zero border stays zero); a shift only into an unpadded one
    opt = run_passes(H + "y = x -> relu -> scale -> conv(6, k=3, p=1, g=2)\n"
                     "z = x -> tanh -> shift -> conv(4, k=3)\noutput y, z\n", "fold-scale-shift")
    assert (opt.rewrites("fold-scale-shift"), opt.ops()) == (2, ["relu", "conv", "tanh", "conv"])
    assert opt.max_error() < FP32


def test_a_shift_before_a_padded_conv_stays(run_passes):
    opt = run_passes(H + "y = x -> relu -> shift -> conv(8, k=3, p=1)\noutput y\n", "fold-scale-shift")
    assert opt.rewrites("fold-scale-shift") == 0
    assert any("fold-scale-shift: skipped y.1" in line and "pads its input" in line for line in opt.log)
    assert opt.max_error() < FP32


def test_refuses_when_the_conv_output_has_other_users(run_passes):
    opt = run_passes(H + "c = x -> conv(8, k=3, p=1)\ny = c -> scale\nz = c + y\noutput z\n", "fold-scale-shift")
    assert opt.rewrites("fold-scale-shift") == 0 and "scale" in opt.ops()
    assert any("has other users" in line for line in opt.log)


def test_a_linear_on_a_rank_3_tensor_keeps_its_scale(run_passes):
    opt = run_passes("network n\ninput x: [N, 6, 10]\ny = x -> linear(6) -> scale\noutput y\n", "fold-scale-shift")
    assert (opt.rewrites("fold-scale-shift"), opt.ops()) == (0, ["linear", "scale"])
    assert opt.max_error() < FP32


def test_runs_at_O1():
    assert "fold-scale-shift" in [step.name for step in level_pipeline(1)]
    assert "fold-scale-shift" not in [step.name for step in level_pipeline(0)]
