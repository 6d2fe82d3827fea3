"""--emit cnn: the graph after passes printed as a spec elaborates back to the same graph."""

from pathlib import Path

import numpy as np
import pytest

import cnncomp

from cnncomp.ir.printer import emit_cnn
from cnncomp.run.reference import run_reference
from cnncomp.verification.harness import make_inputs
from cnncomp.pipeline import optimize
from cnncomp.frontend.cnn.loader import load_text

SMALL = {"lenet", "resnet18", "googlenet", "mobilenet_v2", "shufflenet_v2_x1_0", "squeezenet1_0", "textcnn",
         "deformable_net", "densenet121"}  # -O2 needs weights: the big ones would only add time
SPECS = sorted(str(p) for p in (Path(__file__).parents[1] / "specs").glob("*.cnn"))


def structure(graph):
    return [(l.name, l.op, l.shape, l.dtype, l.attrs, sorted(l.weights), graph.input_names(l.name))
            for l in graph.layers()]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: Path(s).stem)
def test_emitted_spec_elaborates_to_the_same_graph(spec):
    graph = cnncomp.load(spec)
    again = load_text(emit_cnn(graph), "emitted.cnn")
    assert structure(again) == structure(graph)
    assert again.output_names == graph.output_names


@pytest.mark.parametrize("spec", [s for s in SPECS if Path(s).stem in SMALL], ids=lambda s: Path(s).stem)
def test_emitted_spec_after_O2_elaborates_to_the_same_graph(spec):
    graph = optimize(spec, opt_level=2).graph
    again = load_text(emit_cnn(graph), "emitted.cnn")
    assert structure(again) == structure(graph)


def test_a_rewritten_graph_round_trips_with_its_weights():
    compiled = optimize("specs/resnet18.cnn", passes="fold-bn,bottleneck(ratio=0.25)")
    text = emit_cnn(compiled.graph)
    assert "as layer1.0.conv1.1" in text  # the Tucker core keeps a name under the conv it replaced
    again = load_text(text, "emitted.cnn")
    assert structure(again) == structure(compiled.graph)
    feeds = make_inputs(again, 0, batch=1)
    a = run_reference(again, compiled.weights, feeds)["logits"]
    b = run_reference(compiled.graph, compiled.weights, feeds)["logits"]
    np.testing.assert_array_equal(a, b)
