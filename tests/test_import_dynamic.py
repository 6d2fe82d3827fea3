"""`cnncomp import` of a model with dynamic height and width, and `--input-shape`, which pins them.

A small FCN-style segmentation model (three stride-2 convs, a head upsampled by 2 and added to a
1x1 projection of the stride-4 features, then upsampled by 4 back to the input size) is exported by
torch.onnx.export with N, H and W dynamic. Imported, its input stays `[N, 3, H, W]`, and the add of
a stride-8 map upsampled by 2 to a stride-4 map makes the importer state `where H % 8 == 0` (the
sizes 2*ceil(H/8) and ceil(H/4) are equal for every multiple of 8). The compiled spec must match
the eager model at three sizes; pinned, the spec has the given shape and matches at it.

Tolerance: |ort - eager| <= 1e-4 * max|eager| + 1e-4 * |eager| (float32 against float32 eager).
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
from cnncomp.cli import main  # noqa: E402
from cnncomp.errors import CnnError, UsageError  # noqa: E402
from cnncomp.ops import dims  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torchvision_models as tvm  # noqa: E402

SIZES = [(1, 64, 96), (2, 128, 80), (1, 200, 152)]  # (N, H, W): multiples of 8, H and W different


class TinySeg(torch.nn.Module):
    """Stride 2, 4, 8; the stride-8 head upsampled by 2 plus the projected stride-4 map, upsampled by 4."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, 2, 1)
        self.c2 = torch.nn.Conv2d(8, 16, 3, 2, 1)
        self.c3 = torch.nn.Conv2d(16, 16, 3, 2, 1)
        self.head = torch.nn.Conv2d(16, 5, 1)
        self.skip = torch.nn.Conv2d(16, 5, 1)

    def forward(self, x):
        f4 = torch.relu(self.c2(torch.relu(self.c1(x))))
        f8 = self.head(torch.relu(self.c3(f4)))
        up = torch.nn.functional.interpolate(f8, scale_factor=2, mode="bilinear", align_corners=False)
        return torch.nn.functional.interpolate(up + self.skip(f4), scale_factor=4, mode="bilinear",
                                               align_corners=False)


def export(model, path: Path) -> None:
    """torch.onnx.export (TorchScript exporter, opset 17) at 64x96 with N, H and W dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 64, 96),), str(path), opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dynamic")
    torch.manual_seed(0)
    model = TinySeg().eval()
    export(model, folder / "seg.onnx")
    return folder, model


def run_compiled(spec, weights, x: np.ndarray) -> np.ndarray:
    compiled = cnncomp.compile(spec, weights=weights, opt_level=1)
    session = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def eager(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_dynamic_dims_stay_symbols_with_the_constraint_the_merge_needs(exported):
    folder, _ = exported
    result = cnncomp.import_onnx(folder / "seg.onnx", folder / "seg.cnn")
    assert "input x: [N, 3, H, W] where H % 8 == 0, W % 8 == 0" in result.text
    rules = result.graph.meta["symbols"]  # the graph the written spec elaborates to
    assert rules["H"]["multiple_of"] == rules["W"]["multiple_of"] == 8 and rules["N"]["multiple_of"] == 1
    assert (folder / "seg.cnn").read_text() == result.text


def test_imported_dynamic_model_matches_pytorch_at_three_sizes(exported):
    folder, model = exported
    cnncomp.import_onnx(folder / "seg.onnx", folder / "seg3.cnn")
    rng = np.random.default_rng(0)
    for n, h, w in SIZES:
        x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
        want = eager(model, x)
        assert want.shape == (n, 5, h, w)
        assert_close(run_compiled(folder / "seg3.cnn", folder / "seg3.safetensors", x), want)


class ResNetFCN(torch.nn.Module):
    """torchvision's FCN shape on a resnet18 backbone: the stride-32 scores upsampled by 2 plus a stride-16
    skip (the merge needs H % 32 == 0: the stem's max pool and four stride-2 stages), then upsampled by 16."""

    def __init__(self):
        super().__init__()
        self.backbone = tvm.resnet18(seed=0)
        self.score = torch.nn.Conv2d(512, 4, 1)
        self.skip = torch.nn.Conv2d(256, 4, 1)

    def forward(self, x):
        b = self.backbone
        f16 = b.layer3(b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))))
        up = torch.nn.functional.interpolate(self.score(b.layer4(f16)), scale_factor=2, mode="bilinear")
        return torch.nn.functional.interpolate(up + self.skip(f16), scale_factor=16, mode="bilinear")


def test_resnet18_fcn_imports_with_its_dims_and_matches_pytorch_at_three_sizes(tmp_path):
    torch.manual_seed(0)
    model = ResNetFCN().eval()
    export(model, tmp_path / "fcn.onnx")
    result = cnncomp.import_onnx(tmp_path / "fcn.onnx", tmp_path / "fcn.cnn")
    assert "input x: [N, 3, H, W] where H % 32 == 0, W % 32 == 0" in result.text
    rng = np.random.default_rng(2)
    for n, h, w in [(1, 64, 96), (2, 96, 64), (1, 160, 128)]:
        x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
        assert_close(run_compiled(tmp_path / "fcn.cnn", tmp_path / "fcn.safetensors", x), eager(model, x))


def test_input_shape_pins_the_dynamic_dims(exported):
    folder, model = exported
    result = cnncomp.import_onnx(folder / "seg.onnx", folder / "pinned.cnn", input_shape="x=1x3x320x480")
    assert "input x: [1, 3, 320, 480]\n" in result.text and "where" not in result.text
    x = np.random.default_rng(1).standard_normal((1, 3, 320, 480)).astype(np.float32)
    assert_close(run_compiled(folder / "pinned.cnn", folder / "pinned.safetensors", x), eager(model, x))


def test_input_shape_on_the_command_line(exported, capsys):
    folder, _ = exported
    assert main(["import", str(folder / "seg.onnx"), "-o", str(folder / "cli.cnn"), "--input-shape",
                 "2x3x64x64"]) == 0
    assert "input x: [2, 3, 64, 64]\n" in (folder / "cli.cnn").read_text()


@pytest.mark.parametrize("shape, message", [
    ("x=1x3x322x480", "differ in height"),  # 322 is no multiple of 8: the add's inputs differ
    ("y=1x3x320x480", "'y', which is no input of the model; its inputs: x"),
    ("x=1x4x320x480", "does not fit the input's declared shape [N, 3, H, W]"),
    ("x=1x3x320", "does not fit the input's declared shape [N, 3, H, W]"),
])
def test_a_pin_that_does_not_fit_is_a_clear_error_and_writes_nothing(exported, capsys, shape, message):
    folder, _ = exported
    out = folder / "bad.cnn"
    assert main(["import", str(folder / "seg.onnx"), "-o", str(out), "--input-shape", shape]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and not out.with_suffix(".safetensors").exists()


def test_a_malformed_input_shape_is_a_usage_error(exported, capsys):
    folder, _ = exported
    assert main(["import", str(folder / "seg.onnx"), "-o", str(folder / "u.cnn"), "--input-shape",
                 "x=1x3xHx4"]) == 2
    assert "--input-shape takes NAME=DxDx" in capsys.readouterr().err


def test_divisibility_for_equal():
    h = dims.symbolic("H")
    stride8_up2 = dims.ceil_div(dims.ceil_div(dims.ceil_div(h, 2), 2), 2) * 2
    stride4 = dims.ceil_div(dims.ceil_div(h, 2), 2)
    assert dims.divisibility_for_equal(stride8_up2, stride4) == ("H", 8)
    assert dims.divisibility_for_equal(h + 1, h) is None  # never equal
    assert dims.divisibility_for_equal(3, 4) is None
    h8 = dims.symbolic("H", 8)
    assert dims.same_size(dims.ceil_div(dims.ceil_div(dims.ceil_div(h8, 2), 2), 2) * 2,
                          dims.ceil_div(dims.ceil_div(h8, 2), 2))


def test_import_model_api_raises_for_an_unknown_option(exported):
    folder, _ = exported
    with pytest.raises(UsageError, match="no option 'input_shapes'.*input_shape"):
        cnncomp.import_onnx(folder / "seg.onnx", folder / "o.cnn", input_shapes="x=1x3x8x8")


def test_input_shape_through_the_api_as_a_dict(exported):
    folder, _ = exported
    with pytest.raises(CnnError, match="differ in width"):
        cnncomp.import_onnx(folder / "seg.onnx", folder / "d.cnn", input_shape={"x": (1, 3, 64, 68)})
    assert not (folder / "d.cnn").exists()


class SizedBySeg(torch.nn.Module):
    """torchvision's segmentation heads: resizes to sizes read from other tensors' shapes at run time
    (`F.interpolate(y, size=x.shape[-2:])`), to an intermediate map's size and back to the input's."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, 2, 1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, 2, 1)
        self.head = torch.nn.Conv2d(8, 5, 1)
        self.skip = torch.nn.Conv2d(8, 5, 1)

    def forward(self, x):
        f2 = torch.relu(self.c1(x))
        f4 = self.head(torch.relu(self.c2(f2)))
        up = torch.nn.functional.interpolate(f4, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        return torch.nn.functional.interpolate(up + self.skip(f2), size=x.shape[-2:], mode="bilinear",
                                               align_corners=False)


def test_sizes_read_from_shapes_import_as_upsample_to_those_dims_and_match_at_three_sizes(tmp_path):
    torch.manual_seed(0)
    model = SizedBySeg().eval()
    export(model, tmp_path / "sized.onnx")
    result = cnncomp.import_onnx(tmp_path / "sized.onnx", tmp_path / "sized.cnn")
    assert "input x: [N, 3, H, W]\n" in result.text  # no constraint: the sizes are exact for every H and W
    assert "size=(H, W)" in result.text and "size=((H + 1) // 2, (W + 1) // 2)" in result.text
    rng = np.random.default_rng(3)
    for n, h, w in [(1, 64, 96), (2, 37, 50), (1, 121, 77)]:  # odd sizes too: no scale could say them
        x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
        want = eager(model, x)
        assert want.shape == (n, 5, h, w)
        assert_close(run_compiled(tmp_path / "sized.cnn", tmp_path / "sized.safetensors", x), want)


def test_sizes_read_from_shapes_of_a_static_export_stay_static(tmp_path):
    torch.manual_seed(0)
    model = SizedBySeg().eval()
    x = np.random.default_rng(4).standard_normal((1, 3, 64, 96)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x),), str(tmp_path / "static.onnx"), opset_version=17,
                          dynamo=False, input_names=["x"], output_names=["y"])
    result = cnncomp.import_onnx(tmp_path / "static.onnx", tmp_path / "static.cnn")
    assert "input x: [1, 3, 64, 96]" in result.text and "H" not in result.text.split("input x:")[1].split("\n")[0]
    assert_close(run_compiled(tmp_path / "static.cnn", tmp_path / "static.safetensors", x), eager(model, x))
