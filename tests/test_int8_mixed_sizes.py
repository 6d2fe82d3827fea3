"""Int8 calibration over samples of different sizes for a dynamic model (input [N, 3, H, W]): a .npz of
several differently shaped keys and a folder of images at their own sizes (--preprocess imagenet-keep),
through calibration, bias correction and the held-out error; a static model refuses another size."""

from __future__ import annotations

import numpy as np
import pytest

from cnncomp.cli import main
from cnncomp.errors import CnnError
from cnncomp.inputs import SampleList
from cnncomp.passes.budget import batches, split_held_out
from cnncomp.pipeline import emit_model, load as load_graph, optimize
from cnncomp.precision.calibration import load_calibration
from cnncomp.precision.int8 import quantize_int8

DYNAMIC = ("network seg\ninput x: [N, 3, H, W] where H % 4 == 0, W % 4 == 0\n"
           "y = x -> conv(8, k=3, p=1) as c1 -> relu -> conv(16, k=3, s=2, p=1) as c2 -> relu\n"
           "   -> conv(16, k=3, s=2, p=1) as c3 -> relu -> conv(4, k=1) as head\n"
           "output y\n")
STATIC = "network still\ninput x: [N, 3, 16, 16]\ny = x -> conv(4, k=3, p=1) as c1 -> relu\noutput y\n"
SIZES = [(16, 16), (24, 32), (32, 20), (16, 40), (28, 28), (20, 24), (36, 16), (24, 24)]


@pytest.fixture
def dynamic(tmp_path) -> str:
    path = tmp_path / "seg.cnn"
    path.write_text(DYNAMIC)
    return str(path)


def mixed_npz(path, sizes=SIZES, seed=1):
    rng = np.random.default_rng(seed)
    arrays = {f"img{i}": rng.standard_normal((3, h, w)).astype(np.float32) for i, (h, w) in enumerate(sizes)}
    arrays["pair"] = rng.standard_normal((2, 3, 12, 8)).astype(np.float32)  # a batch of two at one size
    np.savez(path, **arrays)
    return arrays


def test_npz_of_mixed_sizes_loads_one_sample_per_run(dynamic, tmp_path):
    arrays = mixed_npz(tmp_path / "cal.npz")
    feeds = load_calibration(tmp_path / "cal.npz", load_graph(dynamic))
    samples = feeds["x"]
    assert isinstance(samples, SampleList) and len(samples) == len(SIZES) + 2
    np.testing.assert_array_equal(samples[1][0], arrays["img1"])
    np.testing.assert_array_equal(samples[-1][0], arrays["pair"][1])
    calib, held, _ = split_held_out(feeds)
    assert len(calib["x"]) == 8 and len(held["x"]) == 2 and isinstance(held["x"], SampleList)
    shapes = [b["x"].shape for b in batches(calib)]
    assert shapes[:3] == [(1, 3, 16, 16), (1, 3, 24, 32), (1, 3, 32, 20)]


def test_int8_calibrates_and_measures_over_mixed_sizes(dynamic, tmp_path):
    mixed_npz(tmp_path / "cal.npz")
    compiled = optimize(dynamic)
    for method in ("percentile", "minmax"):
        model, report = quantize_int8(emit_model(compiled), compiled.graph, compiled.ref_graph,
                                      compiled.ref_weights, str(tmp_path / "cal.npz"), method=method,
                                      bias_correction="on", max_error=0.5)
        assert report.samples == 8 and report.held_out == 2
        assert 0 < report.error < 0.1, report.summary()
        assert any("bias correction applied" in n for n in report.notes), report.notes
        assert report.inputs["x"].shape[0] >= 1  # the check runs on held-out samples of one size


@pytest.mark.parametrize("method", ["mse", "layer"])
def test_the_sensitivity_search_runs_on_symbolic_sizes(dynamic, tmp_path, method):
    """The per-layer search (--stats, or a missed budget) on a model of symbolic sizes: no share of the MACs is
    known, so the table says so instead of failing (a TypeError comparing a SymDim), with cnncomp's own range
    methods over mixed sizes."""
    mixed_npz(tmp_path / "cal.npz")
    compiled = optimize(dynamic)
    _, report = quantize_int8(emit_model(compiled), compiled.graph, compiled.ref_graph, compiled.ref_weights,
                              str(tmp_path / "cal.npz"), method=method, max_error=0.5, sensitivity=True)
    assert report.layers and all(l.macs_share is None for l in report.layers)
    assert 0 < report.error < 0.1, report.summary()
    assert "the share of the MACs unknown (symbolic sizes)" in report.table()


def test_bias_correction_averages_shifts_over_sizes(dynamic, tmp_path):
    from cnncomp.precision.bias_correction import bias_corrections
    from cnncomp.precision.int8 import Quantizer

    mixed_npz(tmp_path / "cal.npz")
    compiled = optimize(dynamic)
    model = emit_model(compiled)
    feeds = load_calibration(tmp_path / "cal.npz", compiled.ref_graph)
    quantizer = Quantizer(model, feeds, "minmax")
    try:
        quantized = quantizer.quantize()
        mixed = bias_corrections(model, quantized, feeds)
        # the shift is linear in the mean input: two sizes' shifts, weighted by their samples
        one = {"x": feeds["x"][:1]}
        two = {"x": feeds["x"][1:2]}
        a, b = bias_corrections(model, quantized, one), bias_corrections(model, quantized, two)
        both = bias_corrections(model, quantized, {"x": SampleList(feeds["x"][:2])})
    finally:
        quantizer.close()
    assert mixed and set(both) == set(a)
    for name in a:
        np.testing.assert_allclose(both[name], (a[name] + b[name]) / 2, rtol=1e-6, atol=1e-9)


def test_mixed_sizes_compile_from_the_command_line(dynamic, tmp_path, capsys):
    mixed_npz(tmp_path / "cal.npz")
    out = tmp_path / "seg.onnx"
    assert main(["compile", dynamic, "--precision", "int8", "--calibration", str(tmp_path / "cal.npz"),
                 "-o", str(out)]) == 0, capsys.readouterr().err
    assert out.exists()
    assert "on 8 samples" in capsys.readouterr().err


def test_a_sample_breaking_a_where_constraint_is_refused(dynamic, tmp_path):
    np.savez(tmp_path / "bad.npz", a=np.zeros((3, 16, 16), np.float32), b=np.zeros((3, 18, 16), np.float32))
    with pytest.raises(CnnError, match=r"bad.npz, sample 1: .*H=18 breaks the constraint H % 4 == 0"):
        load_calibration(tmp_path / "bad.npz", load_graph(dynamic))


def test_a_static_model_refuses_a_sample_of_another_size(tmp_path, capsys):
    spec = tmp_path / "still.cnn"
    spec.write_text(STATIC)
    np.savez(tmp_path / "cal.npz", a=np.zeros((3, 16, 16), np.float32), b=np.zeros((3, 20, 16), np.float32))
    with pytest.raises(CnnError, match=r"cal.npz, sample 1: input 'x' has shape \[1, 3, 20, 16\]; "
                                       r"the network takes \['N', 3, 16, 16\]"):
        load_calibration(tmp_path / "cal.npz", load_graph(str(spec)))
    out = tmp_path / "still.onnx"
    assert main(["compile", str(spec), "--precision", "int8", "--calibration", str(tmp_path / "cal.npz"),
                 "-o", str(out)]) == 1
    assert "has shape [1, 3, 20, 16]" in capsys.readouterr().err and not out.exists()


def write_images(folder, sizes=((40, 30), (90, 60), (24, 48), (1200, 600))):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


def test_image_folder_at_own_sizes_keeps_aspect_and_caps_the_longer_side(dynamic, tmp_path):
    pytest.importorskip("PIL", reason="pillow is not installed (pip install 'cnncomp[images]')")
    from PIL import Image

    write_images(tmp_path / "images")
    feeds = load_calibration(tmp_path / "images", load_graph(dynamic), preprocess="imagenet-keep")
    # (height, width): kept, rounded down to multiples of 4; 1200x600 scaled to 512x256
    assert [s.shape[2:] for s in feeds["x"]] == [(28, 40), (60, 88), (48, 24), (256, 512)]
    with Image.open(tmp_path / "images" / "img0.png") as image:
        image = image.convert("RGB").resize((40, 28), Image.BILINEAR)
        expected = (np.asarray(image, np.float32) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(feeds["x"][0][0], expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
    compiled = optimize(dynamic)
    _, report = quantize_int8(emit_model(compiled), compiled.graph, compiled.ref_graph, compiled.ref_weights,
                              str(tmp_path / "images"), preprocess="imagenet-keep", method="minmax")
    assert report.samples == 3 and report.held_out == 1 and report.error < 0.1


def test_imagenet_keep_needs_a_dynamic_input(tmp_path):
    pytest.importorskip("PIL", reason="pillow is not installed (pip install 'cnncomp[images]')")
    spec = tmp_path / "still.cnn"
    spec.write_text(STATIC)
    write_images(tmp_path / "images")
    with pytest.raises(CnnError, match="imagenet-keep calibrates at each image's own size, so the input needs "
                                       "symbolic height and width"):
        load_calibration(tmp_path / "images", load_graph(str(spec)), preprocess="imagenet-keep")


def test_bench_times_mixed_calibration_at_the_first_samples_size(dynamic, tmp_path, capsys):
    mixed_npz(tmp_path / "cal.npz", sizes=[(16, 16), (24, 32), (16, 16)])
    assert main(["bench", dynamic, "--calibration", str(tmp_path / "cal.npz"), "--batch", "2", "--runtimes", "cpu",
                 "--precisions", "fp32,int8", "--runs", "2"]) == 0, capsys.readouterr().err
