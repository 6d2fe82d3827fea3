"""Every bundled spec compiles to a checker-clean ONNX that agrees with the reference.

Tolerance (the verifier's default, stated here): |ort - ref| <= 1e-4 * max|ref| + 1e-3 * |ref|
elementwise, ONNX Runtime in float32 against the unoptimized graph in float64.
"""

from pathlib import Path

import pytest

import cnncomp
from cnncomp.verification.harness import make_inputs, verify
from cnncomp.pipeline import emit_model, optimize

SPECS = sorted(str(p) for p in (Path(__file__).parents[1] / "specs").glob("*.cnn"))
HEAVY = {"c3d", "vgg16", "alexnet", "densenet121", "mobilenet_v2", "unet", "deeplabv3_resnet50"}  # batch 1 keeps the float64 reference quick


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: Path(s).stem)
def test_spec_verifies_at_O1(spec):
    compiled = optimize(spec, opt_level=1)
    assert not any(layer.op == "bn" for layer in compiled.graph.layers()
                   if Path(spec).stem != "densenet121")  # densenet's pre-activation norms have no conv to fold into
    model = emit_model(compiled)  # runs onnx.checker with full_check
    batch = 1 if Path(spec).stem in HEAVY else 2
    report, _, _ = verify(compiled.ref_graph, compiled.ref_weights, model, compiled.graph, batch=batch)
    assert report.ok, report.format()
    for c in report.outputs.values():
        assert c.max_abs_err <= c.atol + c.rtol * 1e9  # sanity: numbers are finite
        assert c.problem is None


@pytest.mark.parametrize("spec", ["specs/resnet18.cnn", "specs/googlenet.cnn", "specs/textcnn.cnn"])
def test_spec_verifies_at_O2_with_per_layer_checks(spec):
    report = cnncomp.verify(spec, opt_level=2, per_layer=True)
    assert report.ok and report.first_divergent_layer is None, report.format()
    assert len(report.layers) > 5


def test_inputs_are_seeded():
    graph = cnncomp.load("specs/lenet.cnn")
    a, b, c = make_inputs(graph, 1), make_inputs(graph, 1), make_inputs(graph, 2)
    assert (a["x"] == b["x"]).all() and not (a["x"] == c["x"]).all()
    assert a["x"].shape == (2, 1, 28, 28) and a["x"].min() >= -1 and a["x"].max() <= 1
