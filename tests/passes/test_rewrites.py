"""bottleneck (Tucker-2) and depthwise (per-channel SVD): exact at full rank, error shrinking with rank,
skipped where they would not lower MACs, and property-tested over random small convs."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncomp.passes.approx.bottleneck import reconstruct as tucker_reconstruct, tucker2
from cnncomp.passes.approx.depthwise import reconstruct as dw_reconstruct, split_channels

H = "network n\ninput x: [N, 16, 12, 12]\n"


def test_bottleneck_fires_with_the_right_structure(run_passes):
    opt = run_passes(H + "y = x -> conv(32, k=3, p=1) -> relu\noutput y\n", "bottleneck(ratio=0.25)")
    assert opt.rewrites("bottleneck") == 1
    layers = {l.name: l for l in opt.graph.layers()}
    assert [layers[n].attrs["kernel"] for n in ("y.0.0", "y.0.1", "y.0.2")] == [(1, 1), (3, 3), (1, 1)]
    assert (layers["y.0.0"].attrs["out"], layers["y.0.1"].attrs["out"]) == (4, 8)
    assert layers["y.0.0"].attrs["bias"] is False and layers["y.0.2"].attrs["bias"] is True
    assert opt.graph.layer("y.0.1").attrs["pads"] == (1, 1, 1, 1)
    assert 0 < opt.max_error(onnx_runtime=False) < 1


def test_bottleneck_is_exact_at_full_rank(run_passes):
    text = H + "y = x -> conv(32, k=3, s=2, p=1, d=2) -> relu\noutput y\n"
    skipped = run_passes(text, "bottleneck(ranks=16:32)")
    assert skipped.rewrites("bottleneck") == 0  # full rank does not lower MACs: skipped with the reason
    assert any("would not lower MACs" in line for line in skipped.log)
    opt = run_passes(text, "bottleneck(ranks=16:32, always=1)")
    assert opt.rewrites("bottleneck") == 1
    assert opt.max_error() < 1e-5


def test_depthwise_fires_with_pytorch_channel_order(run_passes):
    opt = run_passes(H + "y = x -> conv(64, k=3, p=1)\noutput y\n", "depthwise(m=2)")
    assert opt.rewrites("depthwise") == 1
    dw, pw = opt.graph.layer("y.0.0"), opt.graph.layer("y.0.1")
    assert (dw.attrs["groups"], dw.attrs["out"], pw.attrs["kernel"]) == (16, 32, (1, 1))
    assert opt.max_error() < 1  # approximate: measured, not exact


def test_depthwise_exact_multiplier_keeps_the_function(run_passes):
    # m = min(Cout, k*k) = 9 is exact, but never cheaper: it runs only when forced
    text = H + "y = x -> conv(64, k=3, p=1, d=2) -> relu\noutput y\n"
    assert run_passes(text, "depthwise(m=9)").rewrites("depthwise") == 0
    opt = run_passes(text, "depthwise(m=9, always=1)")
    assert opt.rewrites("depthwise") == 1
    assert opt.max_error() < 1e-5


def test_rewrites_do_not_touch_grouped_or_pointwise_convs(run_passes):
    text = H + "y = x -> conv(16, k=3, p=1, g=4) -> conv(32, k=1)\noutput y\n"
    opt = run_passes(text, "bottleneck(ratio=0.25),depthwise(m=1)")
    assert opt.rewrites("bottleneck") == opt.rewrites("depthwise") == 0


def test_error_falls_as_the_rank_grows_on_a_real_spec(run_passes):
    errors = [run_passes("specs/lenet.cnn", f"bottleneck(ratio={r})").max_error(onnx_runtime=False)
              for r in (0.25, 0.5)]
    assert errors[0] >= errors[1]


@st.composite
def conv_weights(draw):
    cout, cin = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    kernel = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    seed = draw(st.integers(0, 2**16))
    return np.random.default_rng(seed).standard_normal((cout, cin) + kernel)


@settings(max_examples=60, deadline=None)
@given(conv_weights())
def test_tucker2_exact_at_full_rank_and_monotone(w):
    cout, cin = w.shape[:2]
    u_in, core, u_out = tucker2(w, cin, cout)
    np.testing.assert_allclose(tucker_reconstruct(u_in, core, u_out), w, atol=1e-9)
    errors = []
    for r in range(1, min(cin, cout) + 1):
        u_in, core, u_out = tucker2(w, min(r, cin), min(r, cout))
        errors.append(np.linalg.norm(tucker_reconstruct(u_in, core, u_out) - w))
    assert all(a >= b - 1e-9 for a, b in zip(errors, errors[1:]))


@settings(max_examples=60, deadline=None)
@given(conv_weights())
def test_depthwise_split_exact_at_min_cout_k2_and_monotone(w):
    cout, cin = w.shape[:2]
    k = int(np.prod(w.shape[2:]))
    dw, pw = split_channels(w, min(cout, k))
    np.testing.assert_allclose(dw_reconstruct(dw, pw, cin), w, atol=1e-9)
    errors = [np.linalg.norm(dw_reconstruct(*split_channels(w, m), cin) - w) for m in range(1, min(cout, k) + 1)]
    assert all(a >= b - 1e-9 for a, b in zip(errors, errors[1:]))


@settings(max_examples=25, deadline=None)
@given(cin=st.integers(2, 6), cout=st.integers(2, 12), k=st.integers(2, 3), s=st.integers(1, 2),
       p=st.integers(0, 2), d=st.integers(1, 2), seed=st.integers(0, 100))
def test_full_rank_rewrites_are_exact_end_to_end(cin, cout, k, s, p, d, seed):
    """The depthwise split computes the conv exactly at full rank, through the reference (float64)."""
    from pass_helpers import optimize

    from cnncomp.passes import PassContext
    from cnncomp.passes.approx.depthwise import depthwise

    text = f"network n\ninput x: [N, {cin}, 9, 9]\ny = x -> conv({cout}, k={k}, s={s}, p={p}, d={d})\noutput y\n"
    opt = optimize(text, "drop-identity", seed=seed)  # only the graph and weights, no rewrite yet
    ctx = PassContext(opt.graph, opt.weights)
    assert depthwise(ctx, m=min(cout, k * k), always=1) == 1
    assert opt.max_error(onnx_runtime=False) < 1e-6  # the factors are stored in float32


def test_rewrites_skip_conv_transpose_with_the_reason(run_passes):
    text = H + "y = x -> conv_transpose(32, k=3, s=2, p=1) -> relu -> conv(8, k=3, p=1)\noutput y\n"
    for name in ("bottleneck", "depthwise"):
        opt = run_passes(text, f"{name}(always=1)")
        assert opt.rewrites(name) == 1  # the conv only
        assert opt.graph.layer("y.0").op == "conv_transpose"
        assert any(line.startswith(f"{name}: skipped y.0: conv_transpose is not rewritten") for line in opt.log)
