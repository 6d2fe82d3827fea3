"""Every example on the language page parses and elaborates (the page is copied into tests/data)."""

import re
from pathlib import Path

import pytest

from cnncomp.frontend.cnn.loader import load_text

PAGE = Path(__file__).parent / "data" / "cnn-language.md"
BLOCKS = re.findall(r"```\n(.*?)```", PAGE.read_text(), re.S)
SPECS = [b for b in BLOCKS if b.lstrip().startswith(("network", "#")) and "network" in b]
BLOCK_EXAMPLES = [b for b in BLOCKS if b.lstrip().startswith("block")]

HARNESS = """network harness
input x: [N, 64, 56, 56]
{block}
y = x -> {call}
output y
"""


def test_the_page_has_examples():
    assert len(SPECS) >= 1 and len(BLOCK_EXAMPLES) >= 1


@pytest.mark.parametrize("text", SPECS, ids=lambda t: t.split("network")[1].split()[0])
def test_spec_examples_elaborate(text):
    graph = load_text(text, "example.cnn")
    graph.lint()
    assert graph.outputs


@pytest.mark.parametrize("text", BLOCK_EXAMPLES, ids=lambda t: t.split("(")[0].split()[-1])
def test_block_examples_elaborate_inside_a_spec(text):
    name = text.split("(")[0].split()[-1]
    graph = load_text(HARNESS.format(block=text, call=f"{name}(64, 256)"), "example.cnn")
    names = {layer.name for layer in graph.layers()}
    assert {"y.0.conv1", "y.0.bn3", "y.0.downsample.0", "y.0"} <= names


def test_lenet_shapes_and_names():
    graph = load_text(SPECS[0], "lenet.cnn")
    assert graph.layer("features.0").shape == ("N", 6, 28, 28)
    assert graph.layer("features.5").shape == ("N", 16, 5, 5)
    assert graph.layer("logits.5").shape == ("N", 10)
    assert graph.output_names == ["logits"]


def test_return_pipeline_stages_are_numbered_under_the_block():
    text = """network n
block cbr(out) { return in -> conv(out, k=3) -> bn -> relu }
input x: [N, 3, 32, 32]
features = x -> cbr(16) -> cbr(32)
output features
"""
    graph = load_text(text, "n.cnn")
    names = [layer.name for layer in graph.layers()][1:]
    assert names == ["features.0.0", "features.0.1", "features.0.2", "features.1.0", "features.1.1", "features.1.2"]


def test_repeat_continues_the_stage_count():
    text = """network n
input x: [N, 3, 32, 32]
t = x -> conv(8, k=3, p=1) -> repeat 2 { conv(8, k=3, p=1) -> relu } -> gap
output t
"""
    names = [layer.name for layer in load_text(text, "n.cnn").layers()][1:]
    assert names == ["t.0", "t.1", "t.2", "t.3", "t.4", "t.5"]


def test_as_names_replace_generated_names():
    text = """network n
input x: [N, 3, 32, 32]
block unit(c) {
    y = in -> conv(c, k=3, p=1, bias=false) as conv1 -> bn as bn1
    return (y + in) -> relu
}
t = x -> conv(8, k=3, p=1) as stem -> unit(8) as layer1.0 -> repeat 2 as i { unit(8) as "block{i + 1}" }
output t
"""
    names = {layer.name for layer in load_text(text, "n.cnn").layers()}
    assert {"stem", "layer1.0.conv1", "layer1.0.bn1", "layer1.0", "layer1.0.0", "block1.conv1", "block2.bn1"} <= names


def test_a_merge_may_read_one_tensor_twice():
    from cnncomp.run.reference import run_reference
    from cnncomp.verification.harness import make_inputs

    graph = load_text("network n\ninput x: [N, 3, 4, 4]\ny = x -> relu\nw = y + y\nz = concat(w, w)\noutput z\n")
    assert graph.input_names("w") == ["y.0", "y.0"] and graph.input_names("z") == ["w", "w"]
    feeds = make_inputs(graph)
    out = run_reference(graph, {}, feeds)["z"]
    expected = 2 * feeds["x"].clip(0)
    assert out.shape == (2, 6, 4, 4) and (abs(out[:, :3] - expected) < 1e-6).all()
