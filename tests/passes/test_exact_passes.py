"""drop-identity, fold-pad, merge-pointwise, dce: each fires where it should, not where it must not,
and keeps the network's function exactly (float32 tolerance)."""

import pytest

H = "network n\ninput x: [N, 8, 12, 12]\n"
FP32 = 1e-5


def test_drop_identity_removes_dropout_and_identity(run_passes):
    opt = run_passes(H + "y = x -> conv(8, k=3) -> dropout -> identity -> relu\noutput y\n", "drop-identity")
    assert (opt.rewrites("drop-identity"), opt.ops()) == (2, ["conv", "relu"])
    assert opt.max_error() < FP32


def test_drop_identity_keeps_an_output_that_reads_an_input(run_passes):
    opt = run_passes(H + "y = x -> identity\noutput y\n", "drop-identity")
    assert (opt.rewrites("drop-identity"), opt.ops()) == (0, ["identity"])


def test_drop_identity_output_moves_to_the_producer(run_passes):
    opt = run_passes(H + "y = x -> conv(4, k=1) -> dropout\noutput y\n", "drop-identity")
    assert opt.graph.outputs == ["y.0"] and opt.graph.output_names == ["y"]
    assert opt.max_error() < FP32


def test_fold_pad_into_conv_and_pools(run_passes):
    text = H + ("a = x -> pad(1) -> conv(8, k=3)\nb = x -> pad((0, 1, 1, 0)) -> avgpool(k=2, s=1, count_pad=true)\n"
                "c = x -> pad(1, value=-1e39) -> maxpool(k=3, s=1)\ny = concat(a, b, c)\noutput y\n")
    opt = run_passes(text, "fold-pad")
    assert opt.rewrites("fold-pad") == 3
    assert "pad" not in opt.ops()
    assert opt.graph.layer("a.1").attrs["pads"] == (1, 1, 1, 1)
    assert opt.max_error() < FP32


def test_fold_pad_refuses_a_mismatched_value(run_passes):
    opt = run_passes(H + "y = x -> pad(1, value=2) -> conv(8, k=3)\noutput y\n", "fold-pad")
    assert opt.rewrites("fold-pad") == 0
    assert any("pads with 2.0" in line for line in opt.log)


def test_fold_pad_refuses_a_pool_that_does_not_count_padding(run_passes):
    opt = run_passes(H + "y = x -> pad(1) -> avgpool(k=3, s=1, p=1)\noutput y\n", "fold-pad")
    assert opt.rewrites("fold-pad") == 0


def test_merge_pointwise_conv_then_1x1(run_passes):
    opt = run_passes(H + "y = x -> conv(32, k=3, p=1) -> conv(4, k=1) -> relu\noutput y\n", "merge-pointwise")
    assert (opt.rewrites("merge-pointwise"), opt.ops()) == (1, ["conv", "relu"])
    assert opt.graph.layer("y.0").attrs["out"] == 4
    assert opt.max_error() < FP32


def test_merge_pointwise_linear_chain(run_passes):
    opt = run_passes("network n\ninput x: [N, 20]\ny = x -> linear(64) -> linear(64) -> linear(3)\noutput y\n",
                     "merge-pointwise")
    assert (opt.rewrites("merge-pointwise"), opt.ops()) == (2, ["linear"])
    assert opt.max_error() < FP32


def test_merge_pointwise_refuses_when_it_would_raise_macs(run_passes):
    opt = run_passes(H + "y = x -> conv(2, k=3, p=1) -> conv(64, k=1)\noutput y\n", "merge-pointwise")
    assert opt.rewrites("merge-pointwise") == 0
    assert any("would raise MACs" in line for line in opt.log)


def test_merge_pointwise_does_not_cross_a_nonlinearity(run_passes):
    opt = run_passes(H + "y = x -> conv(32, k=3, p=1) -> relu -> conv(4, k=1)\noutput y\n", "merge-pointwise")
    assert opt.rewrites("merge-pointwise") == 0


def test_dce_removes_what_no_output_reads(run_passes):
    opt = run_passes(H + "dead = x -> conv(8, k=3) -> relu\ny = x -> relu\noutput y\n", "dce")
    assert (opt.rewrites("dce"), opt.ops()) == (2, ["relu"])
    assert not any(k.startswith("dead.") for k in opt.weights)


def test_dce_keeps_a_live_graph(run_passes):
    assert run_passes(H + "y = x -> relu\noutput y\n", "dce").rewrites("dce") == 0


@pytest.mark.parametrize("spec", ["specs/googlenet.cnn", "specs/squeezenet1_0.cnn", "specs/shufflenet_v2_x1_0.cnn",
                                  "specs/textcnn.cnn", "specs/deformable_net.cnn"])
def test_the_exact_pipeline_keeps_real_specs_within_fp32(run_passes, spec):
    opt = run_passes(spec, "drop-identity,fold-pad,fold-bn,merge-pointwise,dce")
    assert "bn" not in opt.ops() and "dropout" not in opt.ops()
    assert opt.max_error() < 1e-4


def test_fold_pad_refuses_a_non_constant_mode(run_passes):
    opt = run_passes(H + "y = x -> pad(1, mode=\"reflect\") -> conv(8, k=3)\noutput y\n", "fold-pad")
    assert opt.rewrites("fold-pad") == 0 and "pad" in opt.ops()
    assert any("mode \"reflect\"" in line for line in opt.log)
    assert opt.max_error() < FP32
