"""`cnncomp import` of models exported by torch.onnx.export (opset 17, the TorchScript exporter).

The hand-written torchvision models of tests/torchvision_models.py (seeded, eval
mode) are exported at 64x64 with a dynamic batch, imported, compiled, and run
under ONNX Runtime on a seeded batch of 2: the outputs must equal the eager
model's. The exporter folds each batch norm into its conv (eval mode,
constant folding), so the imported spec has biased convs where the model has
conv + bn; the names stay the model's module paths (`layer1.0.conv1.weight`).

Tolerance: |ort - eager| <= 1e-4 * max|eager| + 1e-4 * |eager| (float32 kernels
on BN-folded weights against float32 eager PyTorch).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import cnncomp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torchvision_models as tvm  # noqa: E402

SIZE = 64
BATCH = 2


def export(model, path: Path, example, opset: int = 17, dynamic: bool = True) -> None:
    """torch.onnx.export with the TorchScript exporter, input x, output y, batch dim N dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), opset_version=opset, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}} if dynamic else None)


def ort_run(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.fixture(scope="module", params=["resnet18", "resnet50", "mobilenet_v2"])
def imported(request, tmp_path_factory):
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    model = tvm.BUILDERS[name](seed=0)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    export(model, folder / f"{name}.onnx", x)
    result = cnncomp.import_onnx(folder / f"{name}.onnx", folder / f"{name}.cnn")
    with torch.no_grad():
        eager = model(x).numpy()
    return name, folder, result, x.numpy(), eager, model


def test_exported_torchvision_model_imports_and_computes_the_same(imported):
    name, folder, result, x, eager, _ = imported
    compiled = cnncomp.compile(folder / f"{name}.cnn", weights=folder / f"{name}.safetensors", opt_level=1)
    assert_close(ort_run(compiled, x), eager)


def test_imported_names_are_the_module_paths(imported):
    name, _, result, _, _, model = imported
    torch_names = {k for k in model.state_dict() if k.endswith(".weight")}
    conv_names = {k for k in torch_names if k.replace(".weight", "") in dict(model.named_modules())
                  and isinstance(dict(model.named_modules())[k.replace(".weight", "")], torch.nn.Conv2d)}
    assert conv_names <= set(result.weights)  # every conv keeps its name; its bn is folded into it
    linear = [k for k, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for k in linear:
        np.testing.assert_array_equal(result.weights[f"{k}.weight"], model.state_dict()[f"{k}.weight"].numpy())


def test_resnet_imports_read_as_blocks_in_repeats(imported):
    name, _, result, _, _, _ = imported
    if name == "resnet50":
        assert 'repeat 5 as i { ' in result.text and 'as "layer3.{i + 1}" }' in result.text, result.text
        assert len(result.text.splitlines()) < 50, result.text
    assert "block " in result.text


def test_opset_11_export_imports(tmp_path):
    """Opsets 11 to 16 are converted to 17 first (Clip's bounds as inputs, Pad's pads as an input...)."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6(), torch.nn.MaxPool2d(2, ceil_mode=True),
        torch.nn.ZeroPad2d((1, 2, 0, 1)), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    ).eval()
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    export(model, tmp_path / "m.onnx", x, opset=11)
    result = cnncomp.import_onnx(tmp_path / "m.onnx", tmp_path / "m.cnn")
    assert "relu6" in result.text and "ceil=true" in result.text
    compiled = cnncomp.compile(tmp_path / "m.cnn", weights=tmp_path / "m.safetensors", opt_level=0)
    with torch.no_grad():
        assert_close(ort_run(compiled, x.numpy()), model(x).numpy())
