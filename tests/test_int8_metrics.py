"""Task metrics for int8's budget (issue 19): each metric on hand-made arrays, the few-samples estimate, the
--metric grammar and its errors, which metric each output gets, the budget error, a trained digits classifier
judged by top1 against rel-l2, the API's callable metric, --labels, and what --stats, --json and --per-layer say."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cnncomp.cli import main
from cnncomp.errors import CnnError, UsageError
from cnncomp.inputs import SampleList
from cnncomp.pipeline import emit_model, load as load_graph, optimize
from cnncomp.precision.int8 import quantize_int8
from cnncomp.verification.metrics import (
    Accuracy, IoU, MaxAbs, MetricItem, Psnr, RelL2, TopK, flip_probabilities, load_labels, parse_metric,
    plan_metrics,
)

CLASSIFIER = ("network small\ninput x: [N, 3, 16, 16]\n"
              "y = x -> conv(16, k=3, p=1) as c1 -> relu -> conv(16, k=3, p=1) as c2 -> relu\n"
              "   -> conv(32, k=3, s=2, p=1) as c3 -> relu -> gap as pool -> flatten as flat -> linear(10) as fc\n"
              "output y\n")
TWO_HEADS = ("network heads\ninput x: [N, 3, 16, 16]\n"
             "f = x -> conv(16, k=3, p=1) as c1 -> relu -> gap -> flatten\n"
             "logits = f -> linear(10) as cls\nboxes = f -> linear(4) as reg\n"
             "output logits\noutput boxes\n")
SEGMENTER = ("network seg\ninput x: [N, 3, 16, 16]\n"
             "f = x -> conv(8, k=3, p=1) as c1 -> relu\n"
             "mask = f -> conv(5, k=1) as head -> softmax as prob\ndepth = f -> conv(1, k=1) as d\n"
             "output mask\noutput depth\n")


def write(tmp_path, text: str, name: str = "net.cnn") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def samples(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 16, 16)).astype(np.float32)


# ---- each metric on hand-made arrays -----------------------------------------------------------------


def test_rel_l2_max_abs_and_psnr_values():
    ref = np.array([[3.0, 4.0]])
    out = np.array([[3.0, 4.5]])
    assert RelL2().measure(ref, out).value == pytest.approx(0.1)
    assert MaxAbs().measure(ref, out).value == pytest.approx(0.5)
    assert MaxAbs().default_threshold(0.01, ref) == pytest.approx(0.04)  # --max-error x max|reference|
    ref = np.linspace(0, 1, 101)  # range 1: a uniform error of 0.01 is 40 dB
    psnr = Psnr().measure(ref, ref + 0.01).value
    assert psnr == pytest.approx(40.0)
    assert Psnr().normalized(psnr, 40.0) == pytest.approx(1.0)
    assert Psnr().normalized(46.0, 40.0) == pytest.approx(0.5, rel=1e-2)  # half the RMS error allowed
    assert Psnr().measure(ref, ref).value == math.inf and Psnr().normalized(math.inf, 40) == 0.0
    assert math.isnan(RelL2().normalized(math.nan, 0.01))


def test_top1_and_topk_count_changed_decisions_on_many_samples():
    ref = np.tile(np.eye(4) * 10, (250, 1))  # 1000 decisions with a wide margin
    out = ref.copy()
    out[np.flatnonzero(ref.argmax(1) == 0)[:30], 1] += 20  # 30 samples of class 0 now pick class 1 first
    value = TopK(1).measure(ref, out)
    # 3% observed; with 1000 samples the margin model (32 samples' worth) moves it little
    expected = flip_probabilities(ref, out).mean()
    assert value.value == pytest.approx((30 + 32 * expected) / 1032) and "30 of 1000 decisions changed" in value.text
    assert 0.028 < value.value < 0.031
    # the reference's class is still second: within the top 2
    assert "0 of 1000 decisions changed" in TopK(2).measure(ref, out).text
    assert TopK(1).label == "top1" and TopK(5).label == "top5"


def test_a_tie_broken_the_other_way_is_no_changed_decision():
    """A relu'd head ties classes exactly in the reference; float32 breaks the tie either way (a random network of
    the int8 fuzz test missed top1 with every layer in float32 before ties counted as such)."""
    ref = np.array([[0.0, 0.0, 0.0, -1.0], [2.0, 0.0, 0.0, 0.0]] * 8)
    out = ref + np.array([0.0, 1e-9, 0.0, 0.0])
    measured = TopK(1).measure(ref, out)
    assert "0 of 16 decisions changed" in measured.text and measured.value < 1e-6
    out[1] = [0.0, 3.0, 0.0, 0.0]  # a real change
    assert "1 of 16 decisions changed" in TopK(1).measure(ref, out).text


def test_top1_of_a_per_pixel_class_map_and_of_differently_sized_samples():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 5, 4, 4)) * 10
    out = ref.copy()
    out[0, :, 1, 2] = -out[0, :, 1, 2]  # one pixel's decision changes (its scores negated)
    measured = TopK(1, axis=1).measure(ref, out)
    assert "1 of 32 decisions changed" in measured.text
    mixed_ref = SampleList([ref[:1], rng.standard_normal((1, 5, 2, 6))])
    mixed_out = SampleList([out[:1], mixed_ref[1]])
    assert "1 of 28 decisions changed" in TopK(1, axis=1).measure(mixed_ref, mixed_out).text


def test_iou_of_thresholded_maps():
    ref = np.zeros((1, 1, 4, 4))
    ref[0, 0, :2, :2] = 0.9  # 4 pixels on
    out = ref.copy()
    out[0, 0, 0, 2] = 0.8  # one more on: IoU 4/5
    assert IoU(0.5).measure(ref, out).value == pytest.approx(0.2)
    assert IoU(0.85).measure(ref, out).value == pytest.approx(0.0)  # at 0.85 the extra pixel stays off
    assert IoU().arg == 0.5 and IoU(0.3).label == "iou(0.3)"
    assert IoU(0.5).measure(np.zeros(4), np.zeros(4)).value == 0.0  # both empty: the same map


def test_accuracy_against_labels():
    ref = np.eye(4)[[0, 1, 2, 3]] * 5
    out = ref.copy()
    out[1] = np.eye(4)[2] * 5  # sample 1 (right in the reference) now says 2
    labels = np.array([0, 1, 2, 0])  # the reference is right on 3 of 4
    measured = Accuracy(labels).measure(ref, out)
    assert "accuracy 50.0% against the reference's 75.0%" in measured.text
    # 25 points observed, blended with the flip chances of the samples the reference gets right
    expected = float(((ref.argmax(1) == labels) * flip_probabilities(ref, out)).mean())
    assert measured.value == pytest.approx((0.25 * 4 + expected * 32) / (4 + 32))
    assert expected > 0 and measured.value < 0.25
    with pytest.raises(CnnError, match="3 labels for 4 decisions"):
        Accuracy(labels[:3]).measure(ref, out)


def test_few_samples_estimate_tracks_the_true_flip_rate_better_than_counting():
    """Four held-out samples: counting flips says 0% or 25%; the estimate from margins against the measured
    noise is closer to the rate measured on 20000 samples (the question a budget of 1 point asks)."""
    rng = np.random.default_rng(0)

    def draw(n):
        ref = rng.standard_normal((n, 10)) * 3
        return ref, ref + rng.standard_normal((n, 10)) * 0.15

    ref, out = draw(20000)
    true_rate = float(np.mean(np.argmax(ref, 1) != np.argmax(out, 1)))
    assert 0.005 < true_rate < 0.05
    counted, estimated = [], []
    for _ in range(300):
        ref, out = draw(4)
        counted.append(float(np.mean(np.argmax(ref, 1) != np.argmax(out, 1))))
        estimated.append(TopK(1).measure(ref, out).value)
    counted, estimated = np.array(counted), np.array(estimated)
    assert np.mean(np.abs(estimated - true_rate)) < 0.7 * np.mean(np.abs(counted - true_rate))
    assert abs(np.mean(estimated) - true_rate) < 0.25 * true_rate  # unbiased, on this noise
    assert (estimated[counted == 0] > 0).all()  # no flip seen is not proof of none
    assert np.all(estimated[counted == 0.25] < 0.25)  # one flip of four is not 25 points
    # the same samples with more noise: a higher estimate (a signal the budget search can follow), none without
    ref, out = draw(4)
    rates = [TopK(1).measure(ref, ref + (out - ref) * scale).value for scale in (0, 1, 2, 4)]
    assert rates[0] == 0.0 and rates == sorted(rates) and rates[1] < rates[3]


# ---- the grammar ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, items", [
    ("top1", [MetricItem(None, "topk", 1.0)]),
    ("logits=top1,boxes=rel-l2", [MetricItem("logits", "topk", 1.0), MetricItem("boxes", "rel-l2")]),
    ("mask=iou(0.5)", [MetricItem("mask", "iou", 0.5)]),
    ("top1<=0.02", [MetricItem(None, "topk", 1.0, 0.02)]),
    ("psnr>=40", [MetricItem(None, "psnr", None, 40.0)]),
    (" logits = topk(5) <= 0.03 , auto", [MetricItem("logits", "topk", 5.0, 0.03), MetricItem(None, "auto")]),
    ("out.1=max-abs<=0.5", [MetricItem("out.1", "max-abs", None, 0.5)]),
])
def test_metric_spellings(text, items):
    assert list(parse_metric(text).items) == items


@pytest.mark.parametrize("text, message", [
    ("top7x", "unknown metric 'top7x'; known: auto, rel-l2, max-abs, top1.* at column 1\n  top7x\n  \\^"),
    ("logits=foo", "unknown metric 'foo'.* at column 8\n  logits=foo\n         \\^"),
    ("top1<=abc", "bad threshold 'abc'.* at column 7"),
    ("top1<=-1", "bad threshold '-1'"),
    ("psnr<=40", "psnr is bounded with >= \\(higher is better\\), not <="),
    ("top1>=0.5", "top1 is bounded with <="),
    ("top1<0.5", "top1 is bounded with <=.*not <"),
    ("topk", "topk needs its K"),
    ("topk(0)", "topk takes a whole number of classes 1 or more"),
    ("rel-l2(3)", "'rel-l2' takes no argument"),
    ("iou(x)", "iou takes a number"),
    ("auto<=0.1", "auto takes no threshold"),
    ("a=top1,a=rel-l2", "output 'a' is given twice"),
    ("top1,rel-l2", "the default metric is given twice"),
    ("", "--metric takes a metric"),
    ("a=,b", "cannot read 'a='"),
])
def test_metric_spelling_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_metric(text)


_OUTPUTS = st.sampled_from(["logits", "boxes", "out.1", "mask_2"])
_METRICS = st.sampled_from([("rel-l2", "rel-l2", None), ("max-abs", "max-abs", None), ("top1", "topk", 1.0),
                            ("top5", "topk", 5.0), ("topk(3)", "topk", 3.0), ("iou", "iou", None),
                            ("iou(0.25)", "iou", 0.25), ("psnr", "psnr", None), ("auto", "auto", None)])
_THRESHOLDS = st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False, allow_infinity=False))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), _OUTPUTS), _METRICS, _THRESHOLDS, st.sampled_from(["", " "])),
                min_size=1, max_size=4, unique_by=lambda t: t[0]))
def test_every_well_formed_spec_parses_back_to_its_items(entries):
    parts, expected = [], []
    for output, (spelled, name, arg), threshold, space in entries:
        threshold = None if name == "auto" else threshold
        bound = "" if threshold is None else f"{space}{'>=' if name == 'psnr' else '<='}{space}{threshold!r}"
        parts.append(f"{output + space + '=' + space if output else ''}{spelled}{bound}")
        expected.append(MetricItem(output, name, arg, threshold))
    assert list(parse_metric(",".join(parts)).items) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abtop1kiuelsr-2()=<>,.0159 ", max_size=24))
def test_any_text_parses_or_is_a_usage_error(text):
    try:
        parse_metric(text)
    except UsageError as e:
        assert "Traceback" not in str(e)


# ---- which metric each output gets -------------------------------------------------------------------


def reference_of(graph, count=2):
    return {name: np.ones((count,) + tuple(d if isinstance(d, int) else 1 for d in graph.layer(layer).shape[1:]))
            for name, layer in zip(graph.output_names, graph.outputs)}


def test_auto_judges_class_scores_by_decisions_and_regression_by_relative_l2(tmp_path):
    heads = load_graph(write(tmp_path, TWO_HEADS))
    plan = plan_metrics("auto", heads, 0.01, reference_of(heads))
    chosen = {a.output: a for a in plan.assignments}
    assert isinstance(chosen["logits"].metric, TopK) and chosen["logits"].threshold == 0.01
    assert "class scores: linear cls [N, 10] along axis 1" in chosen["logits"].why
    assert isinstance(chosen["boxes"].metric, RelL2) and chosen["boxes"].threshold == 0.01
    assert "regression" in chosen["boxes"].why and "name" in chosen["boxes"].why
    seg = load_graph(write(tmp_path, SEGMENTER, "seg.cnn"))
    chosen = {a.output: a for a in plan_metrics(None, seg, 0.02, reference_of(seg)).assignments}
    assert isinstance(chosen["mask"].metric, TopK) and chosen["mask"].metric.axis == 1
    assert "softmax prob" in chosen["mask"].why
    assert isinstance(chosen["depth"].metric, RelL2) and chosen["depth"].threshold == 0.02
    assert "conv d [N, 1, 16, 16] is no classifier head" in chosen["depth"].why


def test_a_classifier_head_is_found_through_layers_that_only_reshape_its_scores(tmp_path):
    """PaddleOCR's text-direction classifier (a trained network that ships in tests/data) ends in softmax -> reshape:
    its scores are class scores; a flatten that merges the class axis with another is not looked through."""
    from pathlib import Path

    from cnncomp.frontend.onnx import read_model

    trained = read_model(Path(__file__).parent / "data" / "trained" / "ch_ppocr_mobile_v2.0_cls_infer.onnx").graph
    axis, why = plan_and_why(trained)
    assert axis == 1 and why.startswith("class scores: softmax") and "(through flatten" in why
    spec = ("network n\ninput x: [N, 3, 4, 4]\nf = x -> conv(6, k=1) as c -> softmax as s\n"
            "probs = x -> gap -> flatten -> linear(5) as fc -> softmax as p -> dropout(0.1) as d\n"
            "merged = f -> flatten as all\noutput probs\noutput merged\n")
    graph = load_graph(write(tmp_path, spec))
    from cnncomp.verification.metrics import class_scores

    assert class_scores(graph, "probs") == (1, "class scores: softmax p [N, 5] (through dropout d) along axis 1")
    assert class_scores(graph, "merged")[0] is None  # [N, 96]: channels and pixels mixed


def plan_and_why(graph):
    from cnncomp.verification.metrics import class_scores

    return class_scores(graph, graph.output_names[0])


def test_plan_thresholds_defaults_and_errors(tmp_path):
    heads = load_graph(write(tmp_path, TWO_HEADS))
    ref = reference_of(heads)
    plan = plan_metrics("boxes=max-abs,top1<=0.02", heads, 0.01, ref)
    chosen = {a.output: a for a in plan.assignments}
    assert chosen["logits"].threshold == 0.02 and isinstance(chosen["boxes"].metric, MaxAbs)
    assert chosen["boxes"].threshold == pytest.approx(0.01)  # 0.01 x max|reference| (1)
    with pytest.raises(UsageError, match="--metric names output 'box'; the network's outputs are logits, boxes"):
        plan_metrics("box=rel-l2", heads, 0.01, ref)
    with pytest.raises(UsageError, match="needs --labels"):
        plan_metrics("logits=accuracy", heads, 0.01, ref)
    with pytest.raises(UsageError, match="no output is judged by accuracy"):
        plan_metrics("rel-l2", heads, 0.01, ref, labels=np.zeros(2, int))
    auto = plan_metrics("auto", heads, 0.01, ref, labels=np.zeros(2, int))
    assert [type(a.metric) for a in auto.assignments] == [Accuracy, RelL2]


def test_budget_error_is_the_worst_output_over_its_threshold():
    from cnncomp.verification.metrics import Assignment, MetricPlan

    plan = MetricPlan([Assignment("a", RelL2(), 0.01, ""), Assignment("b", Psnr(), 40.0, "")])
    ref = {"a": np.array([3.0, 4.0]), "b": np.linspace(0, 1, 101)}
    assert plan.budget_error(ref, {"a": np.array([3.0, 4.04]), "b": ref["b"] + 0.01}) == pytest.approx(1.0)
    assert plan.budget_error(ref, {"a": np.array([3.0, 4.1]), "b": ref["b"]}) == pytest.approx(2.0)
    assert math.isnan(plan.budget_error(ref, {"a": np.array([3.0, np.nan]), "b": ref["b"]}))


def test_labels_files(tmp_path):
    np.save(tmp_path / "l.npy", np.arange(4))
    assert load_labels(tmp_path / "l.npy", 4).tolist() == [0, 1, 2, 3]
    (tmp_path / "l.txt").write_text("1\n2  # a comment\n\n3\n")
    assert load_labels(str(tmp_path / "l.txt"), 3).tolist() == [1, 2, 3]
    (tmp_path / "bad.txt").write_text("1\ncat\n")
    with pytest.raises(CnnError, match="bad.txt:2:1: a label is one integer class index per line, got 'cat'"):
        load_labels(tmp_path / "bad.txt", 2)
    with pytest.raises(CnnError, match="l.npy: 4 labels for 5 calibration samples"):
        load_labels(tmp_path / "l.npy", 5)
    np.save(tmp_path / "f.npy", np.zeros(4))
    with pytest.raises(CnnError, match="one integer class index per sample, got an array of float64"):
        load_labels(tmp_path / "f.npy", 4)
    with pytest.raises(CnnError, match="label -1 at sample 1 is negative"):
        load_labels([0, -1], 2)


# ---- the budget on a trained classifier ------------------------------------------------------------------

DIGITS = ("network digits\ninput x: [N, 1, 8, 8]\n"
          "logits = x -> conv(16, k=3, p=1) as c1 -> relu -> conv(32, k=3, p=1) as c2 -> relu -> maxpool(k=2)\n"
          "   -> conv(32, k=3, p=1) as c3 -> relu -> gap -> flatten -> linear(10) as fc\n"
          "output logits\n")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A small CNN trained on scikit-learn's digits for a few seconds: (compiled, test images, test labels)."""
    import torch
    from sklearn.datasets import load_digits

    from cnncomp.run.reference import to_torch

    path = tmp_path_factory.mktemp("digits") / "digits.cnn"
    path.write_text(DIGITS)
    data = load_digits()
    x, y = (data.images / 16.0).astype(np.float32)[:, None], data.target.astype(np.int64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        module = to_torch(optimize(str(path), opt_level=0).ref_graph)
        module.train()
        optimizer = torch.optim.Adam(module.parameters(), 3e-3)
        xs, ys = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
        for _ in range(8):
            for idx in torch.randperm(len(xs), generator=torch.Generator().manual_seed(0)).split(64):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(module(xs[idx]), ys[idx]).backward()
                optimizer.step()
        weights = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
    finally:
        torch.set_num_threads(threads)
    return optimize(str(path), weights=weights), x[1400:1464], y[1400:1464], str(path)


def test_top1_keeps_more_of_a_trained_classifier_in_int8_than_rel_l2(digits):
    compiled, images, _, _ = digits
    model = emit_model(compiled)

    def run(metric):
        return quantize_int8(model, compiled.graph, compiled.ref_graph, compiled.ref_weights, {"x": images},
                             max_error=0.004, metric=metric, bias_correction="off", sensitivity=True)[1]

    by_l2, by_top1 = run("rel-l2"), run("auto")
    int8_macs = {r.metrics[0].metric: sum(l.macs_share for l in r.layers if l.precision == "int8")
                 for r in (by_l2, by_top1)}
    assert by_l2.full_int8_error > 0.004 and by_l2.float_layers and by_l2.error <= 0.004
    assert by_top1.metrics[0].metric == "top1" and not by_top1.float_layers and by_top1.ok
    assert int8_macs["top1"] > int8_macs["rel-l2"]
    assert by_top1.budget_error <= 1.0 and by_top1.error > 0.004  # rel-l2 would have refused this model
    assert by_l2.budget_error == pytest.approx(by_l2.error / 0.004)  # rel-l2: the budget of before
    assert "0 of 16 decisions changed" in by_top1.metrics[0].converted.text
    assert by_top1.top1_agreement == {"logits": 1.0}


def test_labels_judge_the_classifier_by_accuracy(digits, tmp_path):
    import cnncomp

    from cnncomp.ir.weights import save_safetensors

    compiled, images, labels, spec = digits
    save_safetensors(compiled.ref_weights, str(tmp_path / "w.safetensors"))
    report = cnncomp.verify(spec, weights=str(tmp_path / "w.safetensors"), precision="int8",
                            calibration={"x": images}, labels=labels.tolist(), keep_slower_int8=True)
    accuracy = report.details["metrics"]["logits"]
    assert accuracy["metric"] == "accuracy" and accuracy["fits"] and report.ok
    assert "accuracy" in accuracy["int8_text"] and "against the reference's" in accuracy["float32_text"]
    # the check has no labels for its inputs: it judges the same output by decisions
    assert "top1" in report.outputs["logits"].judged_by


# ---- the API's callable, the command line -----------------------------------------------------------------


def test_callable_metric_in_the_api(tmp_path):
    import cnncomp

    spec = write(tmp_path, CLASSIFIER)
    seen = []

    def mean_shift(reference, outputs):
        seen.append((sorted(reference), outputs["y"].shape))
        return float(np.abs(outputs["y"].mean() - reference["y"].mean()))

    report = cnncomp.verify(spec, precision="int8", calibration={"x": samples(8)}, metric=(mean_shift, 0.5))
    assert seen and seen[0] == (["y"], (2, 10))
    metric = report.details["metrics"]["*"]
    assert metric["metric"] == "mean_shift" and metric["threshold"] == 0.5 and metric["fits"] and report.ok
    with pytest.raises(CnnError, match="even with every layer in float32 the budget is missed: \\*: <lambda>"):
        cnncomp.compile(spec, output=tmp_path / "o.onnx", precision="int8", calibration={"x": samples(8)},
                        metric=lambda reference, outputs: 1.0)  # a bare callable is judged against --max-error
    assert not (tmp_path / "o.onnx").exists()
    with pytest.raises(UsageError, match="--metric takes a metric spec"):
        cnncomp.compile(spec, output=tmp_path / "o.onnx", precision="int8", metric=(mean_shift, -1))


def test_the_check_judges_class_scores_by_their_metric(tmp_path):
    """With a relative L2 budget no int8 model could meet, top1 still judges the class scores: the check agrees."""
    import cnncomp

    spec = write(tmp_path, CLASSIFIER)
    report = cnncomp.verify(spec, precision="int8", calibration={"x": samples(8)}, max_error=1e-6,
                            keep_slower_int8=True)  # the check of an int8 model, even where it is not faster
    assert report.ok and "top1" in report.outputs["y"].judged_by
    assert report.outputs["y"].rel_l2_err > 1e-6
    assert any("except y, judged by a task metric" in n for n in report.notes)


def test_cli_metric_and_labels_errors(tmp_path, capsys):
    spec = write(tmp_path, TWO_HEADS)
    np.savez(tmp_path / "cal.npz", x=samples(8))
    np.save(tmp_path / "labels.npy", np.arange(5))
    out = tmp_path / "o.onnx"
    base = ["compile", spec, "--precision", "int8", "--calibration", str(tmp_path / "cal.npz"), "-o", str(out)]
    assert main(base + ["--labels", str(tmp_path / "labels.npy")]) == 1
    assert "labels.npy: 5 labels for 8 calibration samples" in capsys.readouterr().err and not out.exists()
    assert main(base + ["--metric", "box=rel-l2"]) == 2
    assert "the network's outputs are logits, boxes" in capsys.readouterr().err and not out.exists()
    assert main(base + ["--metric", "logits=tpo1"]) == 2
    err = capsys.readouterr().err
    assert "unknown metric 'tpo1'" in err and "logits=tpo1\n" in err and "Traceback" not in err
    assert main(["compile", spec, "--metric", "top1", "-o", str(out)]) == 2  # an int8 option
    assert "--metric goes with --precision int8" in capsys.readouterr().err


def test_stats_json_and_per_layer_say_which_metric_each_output_got(tmp_path, capsys):
    spec = write(tmp_path, TWO_HEADS)
    np.savez(tmp_path / "cal.npz", x=samples(8))
    assert main(["verify", spec, "--precision", "int8", "--calibration", str(tmp_path / "cal.npz"), "--stats",
                 "--per-layer", "--max-error", "0.05", "--keep-slower-int8"]) == 0
    captured = capsys.readouterr()
    assert "int8 metrics (the budget judges each output by its own):" in captured.out
    assert "logits: top1 <= 0.01 (class scores: linear cls [N, 10] along axis 1)" in captured.out
    assert "boxes: rel-l2 <= 0.05 (regression: linear reg [N, 4], but its name says" in captured.out
    assert "note: int8 judges boxes: rel-l2" in captured.out
    assert "top-1 agrees" not in captured.err + captured.out
    assert "int8: boxes: rel-l2 (regression" in captured.err and "int8: logits: top1 (class scores" in captured.err
    assert main(["verify", spec, "--precision", "int8", "--calibration", str(tmp_path / "cal.npz"), "--json",
                 "--metric", "boxes=max-abs", "--keep-slower-int8"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["int8"]["metrics"]["boxes"]["metric"] == "max-abs"
    assert data["int8"]["metrics"]["logits"]["metric"] == "top1" and data["int8"]["budget_error"] <= 1
    assert data["outputs"]["logits"]["judged_by"].startswith("top1 ")


def test_a_tiny_flip_estimate_reads_as_below_what_samples_resolve():
    """A margin far beyond the noise gives a flip chance like 1e-170: the text says "<0.001%", not "1.4e-172%"."""
    ref = np.array([[0.2, 0.0], [0.0, 0.2]])
    out = ref + np.array([[0.01, -0.01], [-0.01, 0.01]])
    text = TopK(1).measure(ref, out).text
    assert "0 of 2 decisions changed (estimate <0.001%)" in text, text
    assert "e-" not in text


def test_too_few_held_out_decisions_for_the_threshold_are_warned_about():
    """16 held-out decisions under a one-point top1 threshold: one flip is 6.2 points, so the verdict rests on the
    margin estimate; the warning says so and how many samples would let flips count. 200 decisions: no warning."""
    from cnncomp.verification.metrics import Assignment, MetricPlan

    plan = MetricPlan([Assignment("logits", TopK(1), 0.01, ""), Assignment("boxes", RelL2(), 0.01, "")])
    rng = np.random.default_rng(0)
    (warning,) = plan.coarse_decisions({"logits": rng.standard_normal((16, 4)), "boxes": rng.standard_normal((16, 4))})
    assert "logits: 16 held-out decisions" in warning and "6.2 points" in warning and "400 samples" in warning
    assert plan.coarse_decisions({"logits": rng.standard_normal((200, 4))}) == []
