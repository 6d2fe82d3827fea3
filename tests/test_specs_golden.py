"""The bundled specs in specs/: they elaborate, match torchvision's parameter counts, MACs and
state_dict names where torchvision has the model, and match their golden summaries.

When a change to a spec, the standard blocks or the summary is intended, regenerate the
golden files with `python tools/regen_golden.py` and review the diff of tests/golden/.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import cnncomp
from cnncomp.analysis.summary import summarize
from cnncomp.frontend.cnn.loader import load_text

ROOT = Path(__file__).resolve().parent.parent
SPECS_DIR = ROOT / "specs"
GOLDEN_DIR = Path(__file__).parent / "golden"
REGEN = "python tools/regen_golden.py"

_spec = importlib.util.spec_from_file_location("regen_golden", ROOT / "tools" / "regen_golden.py")
regen_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regen_golden)

SPEC_NAMES = [p.stem for p in regen_golden.spec_paths()]

# name: (exact parameter count, published MACs (torchvision's "GFLOPS") or None, output shape)
EXPECTED = {
    "lenet": (61_706, None, ["N", 10]),
    "alexnet": (61_100_840, 0.714e9, ["N", 1000]),
    "vgg16": (138_357_544, 15.47e9, ["N", 1000]),
    "resnet18": (11_689_512, 1.814e9, ["N", 1000]),
    "resnet50": (25_557_032, 4.089e9, ["N", 1000]),
    "googlenet": (6_624_904, 1.498e9, ["N", 1000]),
    "mobilenet_v2": (3_504_872, 0.301e9, ["N", 1000]),
    "shufflenet_v2_x1_0": (2_278_604, 0.145e9, ["N", 1000]),
    "densenet121": (7_978_856, 2.834e9, ["N", 1000]),
    "squeezenet1_0": (1_248_424, 0.819e9, ["N", 1000]),
    "se_resnet50": (28_088_024, 4.09e9, ["N", 1000]),
    "hdc_segnet": (982_453, None, ["N", 21, "H", "W"]),
    "textcnn": (154_502, None, ["N", 2]),
    "c3d": (79_991_015, None, ["N", 487]),
    "deformable_net": (526_834, None, ["N", 10]),
    "unet": (31_037_698, None, ["N", 2, "H", "W"]),
    "espcn": (59_657, None, ["N", 1, "3*H", "3*W"]),
    "deeplabv3_resnet50": (42_004_074, None, [["N", 21, "H", "W"], ["N", 21, "H", "W"]]),  # out, aux
}

# A few torchvision state_dict keys per spec that reproduces a torchvision model.
TORCHVISION_KEYS = {
    "alexnet": ["features.0.weight", "features.10.bias", "classifier.1.weight", "classifier.6.bias"],
    "vgg16": ["features.0.weight", "features.28.bias", "classifier.0.weight", "classifier.3.weight",
              "classifier.6.bias"],
    "resnet18": ["conv1.weight", "bn1.running_mean", "layer1.1.conv2.weight", "layer2.0.downsample.0.weight",
                 "layer4.1.bn2.running_var", "fc.bias"],
    "resnet50": ["conv1.weight", "layer1.0.downsample.1.running_var", "layer3.5.conv3.weight",
                 "layer4.2.bn3.bias", "fc.weight"],
    "googlenet": ["conv1.conv.weight", "conv1.bn.running_var", "conv3.conv.weight",
                  "inception3a.branch1.conv.weight", "inception3a.branch2.1.conv.weight",
                  "inception4e.branch3.1.bn.running_mean", "inception5b.branch4.1.conv.weight", "fc.bias"],
    "mobilenet_v2": ["features.0.0.weight", "features.0.1.running_mean", "features.1.conv.0.0.weight",
                     "features.1.conv.1.weight", "features.2.conv.1.0.weight", "features.17.conv.3.running_var",
                     "features.18.0.weight", "classifier.1.weight"],
    "shufflenet_v2_x1_0": ["conv1.0.weight", "conv1.1.running_var", "stage2.0.branch1.0.weight",
                           "stage2.0.branch1.2.weight", "stage2.1.branch2.0.weight", "stage3.7.branch2.5.weight",
                           "stage4.3.branch2.6.running_mean", "conv5.0.weight", "conv5.1.bias", "fc.weight"],
    "densenet121": ["features.conv0.weight", "features.norm0.running_mean",
                    "features.denseblock1.denselayer1.norm1.weight", "features.denseblock1.denselayer6.conv2.weight",
                    "features.transition1.conv.weight", "features.denseblock3.denselayer24.norm2.running_var",
                    "features.denseblock4.denselayer16.conv1.weight", "features.norm5.bias", "classifier.weight"],
    "squeezenet1_0": ["features.0.weight", "features.3.squeeze.weight", "features.3.expand3x3.weight",
                      "features.12.expand1x1.bias", "classifier.1.weight", "classifier.1.bias"],
}

# Weight counts of torchvision's state_dicts without num_batches_tracked (checked against torchvision 0.29).
TORCHVISION_KEY_COUNTS = {"alexnet": 16, "vgg16": 32, "resnet18": 102, "resnet50": 267, "googlenet": 287,
                          "mobilenet_v2": 262, "shufflenet_v2_x1_0": 282, "densenet121": 606, "squeezenet1_0": 52}

_graphs: dict[str, object] = {}


def graph_of(name: str):
    if name not in _graphs:
        _graphs[name] = cnncomp.load(SPECS_DIR / f"{name}.cnn")
    return _graphs[name]


def weight_keys(graph) -> set[str]:
    return {f"{layer.name}.{suffix}" for layer in graph.layers() for suffix in layer.weights}


def test_every_spec_has_expectations_and_a_golden_file():
    assert set(SPEC_NAMES) == set(EXPECTED), "add the new spec to EXPECTED (or remove the stale entry)"
    goldens = {p.stem for p in GOLDEN_DIR.glob("*.json")}
    missing, stale = set(SPEC_NAMES) - goldens, goldens - set(SPEC_NAMES)
    assert not missing, f"no golden summary for {sorted(missing)}: run `{REGEN}`"
    assert not stale, f"golden files without a spec: {sorted(stale)}: delete them"


# ---- (a) every spec elaborates ---------------------------------------------------------------

@pytest.mark.parametrize("name", SPEC_NAMES)
def test_spec_elaborates(name):
    graph = graph_of(name)
    assert graph.name == name, "the `network` name should equal the file name"
    assert graph.outputs


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_spec_has_a_header_comment(name):
    first = (SPECS_DIR / f"{name}.cnn").read_text().lstrip().splitlines()[0]
    assert first.startswith("#"), "each spec starts with a comment saying what it is and its layout"


# ---- (b) parameter counts, MACs and outputs --------------------------------------------------

@pytest.mark.parametrize("name", SPEC_NAMES)
def test_params_macs_and_outputs(name):
    params, macs, out_shape = EXPECTED[name]
    summary = summarize(graph_of(name), with_lint=False)
    assert summary.total_params == params
    if macs is not None:
        assert summary.total_macs == pytest.approx(macs, rel=0.02)
    several = isinstance(out_shape[0], list)  # a spec with several outputs lists each shape
    assert [list(s) for s in summary.outputs.values()] == (out_shape if several else [out_shape])


# ---- (c) golden summaries --------------------------------------------------------------------

@pytest.mark.parametrize("name", SPEC_NAMES)
def test_golden_summary(name):
    path = GOLDEN_DIR / f"{name}.json"
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing: run `{REGEN} {name}`")
    import json

    expected = json.loads(path.read_text())
    actual = regen_golden.golden_summary(SPECS_DIR / f"{name}.cnn")
    if actual == expected:
        return
    hint = f"the summary of specs/{name}.cnn differs from {path.relative_to(ROOT)}; if the change is intended, " \
           f"run `{REGEN} {name}` and review the diff"
    for key in list(expected) + [k for k in actual if k not in expected]:
        if key != "layers" and expected.get(key) != actual.get(key):
            pytest.fail(f"{hint}\n{key}: expected {expected.get(key)!r}\n{' ' * len(key)}  got      {actual.get(key)!r}")
    exp_layers, act_layers = expected["layers"], actual["layers"]
    for i, (e, a) in enumerate(zip(exp_layers, act_layers)):
        if e != a:
            pytest.fail(f"{hint}\nfirst differing layer, #{i}:\nexpected {e}\ngot      {a}")
    pytest.fail(f"{hint}\n{len(exp_layers)} layers expected, {len(act_layers)} found")


def test_golden_files_are_formatted_by_the_tool():
    for name in SPEC_NAMES:
        path = GOLDEN_DIR / f"{name}.json"
        if path.exists():
            import json

            assert path.read_text() == regen_golden.format_golden(json.loads(path.read_text())), \
                f"{path.relative_to(ROOT)} was edited by hand: run `{REGEN} {name}`"


# ---- (d) torchvision state_dict names --------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TORCHVISION_KEYS))
def test_torchvision_state_dict_keys(name):
    keys = weight_keys(graph_of(name))
    missing = [k for k in TORCHVISION_KEYS[name] if k not in keys]
    assert not missing, f"{name}: torchvision keys not among the weight names: {missing}"
    assert len(keys) == TORCHVISION_KEY_COUNTS[name]


def test_weight_shapes_follow_pytorch():
    g = graph_of("googlenet")
    assert tuple(g.layer("inception3a.branch3.1.conv").weights["weight"].shape) == (32, 16, 3, 3)  # torchvision's "5x5"
    g = graph_of("mobilenet_v2")
    assert tuple(g.layer("features.2.conv.1.0").weights["weight"].shape) == (96, 1, 3, 3)  # depthwise
    g = graph_of("shufflenet_v2_x1_0")
    assert tuple(g.layer("stage2.1.branch2.0").weights["weight"].shape) == (58, 58, 1, 1)  # on half the channels
    g = graph_of("densenet121")
    assert tuple(g.layer("features.transition3.conv").weights["weight"].shape) == (512, 1024, 1, 1)


def test_googlenet_pools_use_ceil_mode_and_bn_eps():
    g = graph_of("googlenet")
    pools = [l for l in g.layers() if l.op == "maxpool"]
    assert pools and all(l.attrs["ceil"] for l in pools)
    assert g.layer("maxpool3").shape == ("N", 480, 14, 14)
    bns = [l for l in g.layers() if l.op == "bn"]
    assert all(l.attrs["eps"] == pytest.approx(1e-3) for l in bns)


def test_lenet_is_the_language_page_example():
    page = (Path(__file__).parent / "data" / "cnn-language.md").read_text()
    example = re.findall(r"```\n(# LeNet-5.*?)```", page, re.S)[0]

    def code(text):
        return [line.rstrip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    assert code((SPECS_DIR / "lenet.cnn").read_text()) == code(example)


def test_width_constants_can_be_overridden():
    narrow = summarize(cnncomp.load(SPECS_DIR / "resnet18.cnn", {"width": "32"}), with_lint=False)
    assert narrow.total_params < EXPECTED["resnet18"][0] // 3
    g = cnncomp.load(SPECS_DIR / "textcnn.cnn", {"length": "40", "num_classes": "5"})
    assert g.layer("conv5.0").shape == ("N", 100, 36)
    assert g.layer("head.2").shape == ("N", 5)


# ---- (e) the HDC rule ------------------------------------------------------------------------

def _codes(graph) -> list[str]:
    return [w.code for w in summarize(graph).warnings]


def test_hdc_segnet_has_no_gridding_warning():
    graph = graph_of("hdc_segnet")
    assert "gridding" not in _codes(graph)
    assert graph.layer("context2.conv3").attrs["dilation"][0] == 5


BAD_DILATED = """network gridded
input x: [N, 3, 128, 128]
stem = x -> conv(64, k=3, s=2, p=1) -> relu -> maxpool(k=2, s=2)
context = stem -> conv(64, k=3, p=2, d=2) -> relu -> conv(64, k=3, p=4, d=4) -> relu
               -> conv(64, k=3, p=8, d=8) -> relu
output context
"""


def test_a_dilated_stack_with_a_common_factor_grids():
    warnings = [w for w in summarize(load_text(BAD_DILATED, "gridded.cnn")).warnings if w.code == "gridding"]
    assert len(warnings) == 1
    assert warnings[0].layer == "context.0"
    assert "(2, 4, 8)" in warnings[0].message


def test_hdc_segnet_with_bad_rates_grids():
    graph = cnncomp.load(SPECS_DIR / "hdc_segnet.cnn", {"r1": "2", "r2": "4", "r3": "8"})
    assert "gridding" in _codes(graph)
