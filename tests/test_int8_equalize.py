"""equalize (cross-layer equalization): which pairs it rescales, that their weight ranges match after it,
that the network computes the same outputs (float32 check against the float64 reference), and where it
must refuse."""

from __future__ import annotations

import numpy as np
import pytest

import cnncomp
from cnncomp.passes import PassContext, parse_pass_list, run_pipeline
from cnncomp.pipeline import load as load_graph, weights_for as load_weights_for

CHAIN = ("network chain\ninput x: [N, 3, 12, 12]\n"
         "y = x -> conv(8, k=3, p=1) as a -> bn as abn -> relu -> conv(8, k=3, p=1, g=8) as dw -> bn as dwbn\n"
         "   -> leaky_relu(0.1) -> conv(16, k=1) as pw -> conv(4, k=3, p=1, g=2) as grouped -> relu6\n"
         "   -> conv(4, k=1) as last\n"
         "output y\n")
BRANCH = ("network branch\ninput x: [N, 3, 8, 8]\n"
          "a = x -> conv(8, k=3, p=1) as a -> relu\nb = a -> conv(8, k=1) as b\nc = a -> conv(8, k=1) as c\n"
          "y = b + c\noutput y\n")


def equalized(text, tmp_path, seed=0):
    path = tmp_path / "net.cnn"
    path.write_text(text)
    graph = load_graph(str(path))
    ctx = PassContext(graph.copy(), load_weights_for(graph, None, seed))
    records = run_pipeline(ctx, parse_pass_list("fold-bn,equalize"))
    return str(path), ctx, records


def ranges(ctx, first, second):
    w1 = ctx.weights[f"{first}.weight"].astype(np.float64)
    w2 = ctx.weights[f"{second}.weight"].astype(np.float64)
    groups = ctx.graph.layer(second).attrs["groups"]
    out, per_group = w2.shape[:2]
    channel = (np.arange(out) // (out // groups))[:, None] * per_group + np.arange(per_group)[None, :]
    r2 = np.zeros(w1.shape[0])
    np.maximum.at(r2, channel.ravel(), np.abs(w2).reshape(out, per_group, -1).max(axis=2).ravel())
    return np.abs(w1).reshape(w1.shape[0], -1).max(axis=1), r2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equalize_matches_ranges_and_is_exact(tmp_path, seed):
    spec, ctx, records = equalized(CHAIN, tmp_path, seed)
    equalize = [r for r in records if r.step == "equalize"]
    assert equalize and equalize[0].rewrites == 3  # a -> dw, dw -> pw, pw -> grouped; not grouped -> relu6 -> last
    for first, second in (("a", "dw"), ("dw", "pw"), ("pw", "grouped")):
        r1, r2 = ranges(ctx, first, second)  # swept until every scale is within e^(1e-3) of 1: ratio s^2
        np.testing.assert_allclose(r1, r2, rtol=5e-3)
    assert any("relu6" in line and "not positively homogeneous" in line for line in ctx.log)
    report = cnncomp.verify(spec, passes=["fold-bn", "equalize"], seed=seed)
    assert report.ok, report.format()
    # the weights really changed: the check above would be vacuous otherwise
    plain = PassContext(ctx.graph.copy(), load_weights_for(load_graph(spec), None, seed))
    run_pipeline(plain, parse_pass_list("fold-bn"))
    assert not np.allclose(plain.weights["dw.weight"], ctx.weights["dw.weight"])


def stream_ranges(ctx, producers, consumers):
    """(largest |weight| per channel over the producers, over the consumers' weights reading each channel)."""
    r1 = np.max([ranges(ctx, p, consumers[0])[0] for p in producers], axis=0)
    r2 = np.max([ranges(ctx, producers[0], c)[1] for c in consumers], axis=0)
    return r1, r2


def test_equalize_rescales_a_shared_activation_for_all_its_readers(tmp_path):
    spec, ctx, records = equalized(BRANCH, tmp_path)
    assert [r.rewrites for r in records if r.step == "equalize"][0] == 1
    np.testing.assert_allclose(*stream_ranges(ctx, ["a"], ["b", "c"]), rtol=5e-3)
    assert cnncomp.verify(spec, passes=["equalize"]).ok


# MobileNetV2's linear bottleneck: the project convs and the adds form one stream, read by the expand convs
BOTTLENECK = ("network bottleneck\ninput x: [N, 3, 12, 12]\n"
              "a = x -> conv(8, k=3, p=1) as stem -> bn -> relu6 -> conv(8, k=1) as p1 -> bn\n"
              "b = a -> conv(16, k=1) as e2 -> bn -> relu6 -> conv(16, k=3, p=1, g=16) as dw2 -> relu6\n"
              "      -> conv(8, k=1) as p2 -> bn\n"
              "s = a + b\n"
              "c = s -> conv(16, k=1) as e3 -> relu6 -> conv(8, k=1) as p3\n"
              "t = s + c\n"
              "y = t -> conv(4, k=1) as head -> relu6\n"
              "output y\n")
# a ResNet stage: conv outputs, a max pool, adds and relus, read by the next convs
RESIDUAL = ("network residual\ninput x: [N, 3, 12, 12]\n"
            "m = x -> conv(8, k=3, p=1) as c0 -> bn -> relu -> maxpool(k=2)\n"
            "b = m -> conv(8, k=3, p=1) as c1 -> bn -> relu -> conv(8, k=3, p=1) as c2 -> bn\n"
            "r = m + b\n"
            "y = r -> relu -> conv(4, k=1) as head -> gap -> flatten\n"
            "output y\n")


@pytest.mark.parametrize("text,producers,consumers", [
    (BOTTLENECK, ["p1", "p2", "p3"], ["e2", "e3", "head"]),
    (RESIDUAL, ["c0", "c2"], ["c1", "head"]),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_equalize_follows_a_stream_through_adds_relus_and_pools(tmp_path, text, producers, consumers, seed):
    spec, ctx, records = equalized(text, tmp_path, seed)
    assert [r.rewrites for r in records if r.step == "equalize"][0] >= 1
    np.testing.assert_allclose(*stream_ranges(ctx, producers, consumers), rtol=5e-3)
    assert any(", ".join(producers) in line and "equalized" in line for line in ctx.log), ctx.log
    report = cnncomp.verify(spec, passes=["fold-bn", "equalize"], seed=seed)
    assert report.ok, report.format()


def test_equalize_refuses_a_stream_fed_by_an_input_or_read_by_an_output(tmp_path):
    text = ("network fed\ninput x: [N, 4, 8, 8]\n"
            "s = x + (x -> conv(4, k=1) as a)\n"
            "y = s -> conv(4, k=1) as b -> relu -> conv(4, k=1) as c\n"
            "output y\n")
    spec, ctx, records = equalized(text, tmp_path)
    assert [r.rewrites for r in records if r.step == "equalize"][0] == 1  # b -> relu -> c only
    assert [line for line in ctx.log if "equalized" in line] == ["equalize: b -> y.1 -> c: channel ranges equalized"]
    assert cnncomp.verify(spec, passes=["equalize"]).ok


def test_equalize_reaches_a_fixed_point(tmp_path):
    _, ctx, _ = equalized(CHAIN, tmp_path)
    again = run_pipeline(ctx, parse_pass_list("equalize"))
    assert [r.rewrites for r in again if r.step == "equalize"] == [0]
