"""Pictures: DOT text (one box per layer, block calls as clusters) and `cnncomp graph` through Graphviz.

Rendering needs Graphviz's `dot` program; those tests skip, saying so, where it is not installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_helpers import cli

from cnncomp.emit.dot import build_clusters, op_text, to_dot
from cnncomp.pipeline import load as load_graph

ROOT = Path(__file__).resolve().parents[1]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's `dot` program is not installed (apt-get install graphviz)")


def spec(name: str) -> str:
    return str(ROOT / "specs" / name)


def labels(cluster) -> list[str]:
    out = [re.sub(r"<[^>]+>", "", cluster.label)]
    for child in cluster.children:
        out += labels(child)
    return out


def test_resnet50_clusters_follow_blocks_and_repeats():
    graph = load_graph(spec("resnet50.cnn"))
    root = build_clusters(graph)
    top = [re.sub(r"<[^>]+>", "", c.label) for c in root.children]
    assert top == ["layer1  (3 x bottleneck)", "layer2  (4 x bottleneck)", "layer3  (6 x bottleneck)",
                   "layer4  (3 x bottleneck)"]
    assert [re.sub(r"<[^>]+>", "", c.label) for c in root.children[0].children] == \
        ["layer1.0  (bottleneck)", "layer1.1  (bottleneck)", "layer1.2  (bottleneck)"]
    first = root.children[0].children[0]
    assert {layer.name for layer in first.layers} >= {"layer1.0.conv1", "layer1.0.downsample.0", "layer1.0"}
    # every layer in exactly one place
    placed = []

    def collect(c):
        placed.extend(layer.name for layer in c.layers)
        for child in c.children:
            collect(child)

    collect(root)
    assert sorted(placed) == sorted(layer.name for layer in graph.layers())


def test_googlenet_nested_clusters():
    root = build_clusters(load_graph(spec("googlenet.cnn")))
    names = labels(root)
    assert "inception3a  (tv_inception)" in names
    assert "branch2.0  (basic_conv)" in names  # nested, relative to its inception module
    inception = next(c for c in root.children if "inception3a" in c.label)
    assert len(inception.children) == 6 and [l.name for l in inception.layers] == ["inception3a.branch4.0",
                                                                                    "inception3a"]


def test_dot_text():
    graph = load_graph(spec("googlenet.cnn"))
    text = to_dot(graph)
    layers = [layer for layer in graph.layers()]
    for layer in layers:
        assert f'"{layer.name}" [label=<' in text
    edges = re.findall(r'^  "([^"]+)" -> "([^"]+)"', text, re.M)
    assert len(edges) == sum(len(graph.input_names(layer.name)) for layer in layers)
    concat = [line for line in text.splitlines() if '-> "inception3a"' in line]
    assert len(concat) == 4 and all('label="[' in line and "#990000" in line for line in concat)
    assert '"inception3a" [label=<<b>inception3a</b>' in text and "shape=ellipse" in text
    assert "conv(64, 7, s=2, p=3, bias=false)" in text
    assert "output logits" in text
    assert text.count("subgraph cluster_") == text.count("\n  }") + text.count("\n    }") + \
        text.count("\n      }") + text.count("\n        }")


def test_op_text_shows_what_differs_from_defaults():
    graph = load_graph(spec("resnet18.cnn"))
    assert op_text(graph.layer("conv1")) == "conv(64, 7, s=2, p=3, bias=false)"
    assert op_text(graph.layer("maxpool")) == "maxpool(3, s=2, p=1)"
    assert op_text(graph.layer("relu")) == "relu"


@needs_dot
@pytest.mark.parametrize("name", ["resnet50.cnn", "googlenet.cnn"])
def test_graph_command_draws_svg_and_png(tmp_path, capsys, name):
    svg, png = tmp_path / "model.svg", tmp_path / "model.png"
    code, out, _ = cli(capsys, "graph", spec(name), "-o", svg)
    assert code == 0 and "wrote" in out
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert ("layer4.2" if name == "resnet50.cnn" else "inception5b") in text
    assert cli(capsys, "graph", spec(name), "-o", png, "--rankdir", "LR")[0] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.png", "model.svg"]  # no temporary files


@needs_dot
def test_graph_after_passes_and_emit_dot(tmp_path, capsys):
    code, _, _ = cli(capsys, "graph", spec("resnet18.cnn"), "-D", "width=8", "-O1", "-o", tmp_path / "r.dot")
    assert code == 0
    text = (tmp_path / "r.dot").read_text()
    assert "passes: fold-bn" in text and '"bn1"' not in text
    code, _, _ = cli(capsys, "compile", spec("resnet18.cnn"), "-D", "width=8", "--emit", "dot", "-o",
                     tmp_path / "c.dot")
    assert code == 0
    result = subprocess.run(["dot", "-Tsvg", str(tmp_path / "c.dot")], capture_output=True, timeout=60)
    assert result.returncode == 0 and b"<svg" in result.stdout


def test_graph_dot_text_needs_no_graphviz(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` here
    code, _, err = cli(capsys, "graph", spec("lenet.cnn"), "-o", tmp_path / "lenet.dot")
    assert code == 0, err
    assert (tmp_path / "lenet.dot").read_text().startswith('digraph "lenet"')


def test_graph_without_graphviz_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, err = cli(capsys, "graph", spec("lenet.cnn"), "-o", tmp_path / "lenet.svg")
    assert code == 1
    assert "Graphviz's `dot` program is not installed" in err and "-o model.dot" in err
    assert not (tmp_path / "lenet.svg").exists()


@pytest.mark.parametrize("output, message", [("model.jpg", "cannot tell the picture format"),
                                             ("missing/model.svg", "does not exist")])
def test_graph_bad_output(tmp_path, capsys, output, message):
    code, _, err = cli(capsys, "graph", spec("lenet.cnn"), "-o", tmp_path / output)
    assert code == 1 and message in err
    assert list(tmp_path.iterdir()) == []


def test_graph_spec_error_is_located(tmp_path, capsys):
    bad = tmp_path / "bad.cnn"
    bad.write_text("network n\ninput x: [N, 3, 8, 8]\ny = x -> convv(8, k=3)\noutput y\n")
    code, _, err = cli(capsys, "graph", bad, "-o", tmp_path / "bad.dot")
    assert code == 1 and "bad.cnn:3:10" in err
    assert not (tmp_path / "bad.dot").exists()
