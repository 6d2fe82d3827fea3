"""The one .cnn writer (cnncomp.emit.cnn): blocks and repeats, long chains, names from outside, --emit torch.

`--emit cnn`, `cnncomp import` and `--emit torch` of a rewritten graph all
write through it. These tests pin what it promises beyond tests/test_emit_cnn.py
(the round trip of every bundled spec's structure): the block-finding program
itself reproduces the bundled specs that repeat modules (no flat fallback) and
computes the same outputs; a chain too long for one statement is split; names
the lexer cannot read (non-ASCII) become ASCII identifiers; and `--emit torch`
translates the graph's program without parsing any text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cnncomp
from cnncomp.emit.cnn import write_cnn, write_program
from cnncomp.emit.cnn.spec import _elaborate_same
from cnncomp.emit.cnn.syntax import unparse
from cnncomp.emit.cnn.writer import spec_program
from cnncomp.frontend.cnn import ast
from cnncomp.frontend.cnn.loader import load_text
from cnncomp.frontend.cnn.parser import MAX_STATEMENT_TOKENS, parse
from cnncomp.ir.weights import init_weights
from cnncomp.pipeline import import_model
from cnncomp.run.reference import run_reference
from cnncomp.verification.harness import make_inputs

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
# specs that call a block more than once at the same depth: the writer finds them again
REPEATING = {"resnet18": "-D width=16", "densenet121": "", "squeezenet1_0": "", "shufflenet_v2_x1_0": "",
             "mobilenet_v2": "", "googlenet": ""}
SMALL = {"lenet", "resnet18", "mobilenet_v2", "squeezenet1_0", "textcnn", "deformable_net", "espcn"}


@pytest.mark.parametrize("name", sorted(REPEATING))
def test_the_block_program_itself_reproduces_specs_that_repeat_modules(name):
    graph = cnncomp.load(ROOT / "specs" / f"{name}.cnn")
    program = spec_program(graph, f"<{name} written>")
    assert any(isinstance(s, ast.BlockDef) for s in program.stmts), unparse(program)
    text = unparse(program)
    again, problem = _elaborate_same(text, graph, f"<{name} written>")
    assert again is not None, problem  # not the flat fallback
    assert write_cnn(graph) == text


@pytest.mark.parametrize("name", sorted(SMALL))
def test_written_spec_computes_the_same_outputs(name):
    graph = cnncomp.load(ROOT / "specs" / f"{name}.cnn")
    written = write_program(graph)
    weights = init_weights(graph, 0)
    assert {f"{l.name}.{s}" for l in written.graph.layers() for s in l.weights} == set(weights)
    feeds = make_inputs(graph, 0, batch=1)
    want = run_reference(graph, weights, feeds)
    got = run_reference(load_text(written.text, "again.cnn"), weights, feeds)
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_unparse_writes_the_fewest_parentheses_and_parses_back():
    text = """network exprs
let a = -(2 + 3) * 4 - (5 - 6) // 7
let b = if a > 1 and not (a == 2 or a < 0) then (1, 2) else (3,)
input x: [N, 3, 8, 8]
y = x -> conv(4, k=3, p=1) -> repeat 2 as i { conv(4, k=3, s=if i == 0 then 1 else 1, p=1) as "c.{i + 1}" }
output y
"""
    program = parse(text, "exprs.cnn")
    written = unparse(program)
    assert "let a = -(2 + 3) * 4 - (5 - 6) // 7" in written
    assert "let b = if a > 1 and not (a == 2 or a < 0) then (1, 2) else (3,)" in written
    assert 'repeat 2 as i { conv(4, k=3, s=(if i == 0 then 1 else 1), p=1) as "c.{i + 1}" }' in written
    assert unparse(parse(written, "again.cnn")) == written
    assert [l.name for l in load_text(written, "again.cnn").layers()] == \
           [l.name for l in load_text(text, "first.cnn").layers()]


@pytest.mark.parametrize("path", sorted(ROOT.glob("specs/*.cnn")) + ["stdlib"], ids=lambda p: Path(p).stem)
def test_unparse_is_the_parsers_inverse_on_every_bundled_spec(path):
    """Every bundled spec (and the standard blocks), parsed and written again, reads back to the same text
    and elaborates to the same layers."""
    from cnncomp.frontend.cnn.loader import STDLIB_PATH

    file = STDLIB_PATH if path == "stdlib" else path
    # parsed under another name: unparse records its text under the program's file name (errors.SOURCES)
    text = unparse(parse(file.read_text(), str(file.with_name(file.stem + "_copy.cnn"))))
    assert unparse(parse(text, "again.cnn")) == text
    if path != "stdlib":
        layers = [(l.name, l.op, l.shape, l.attrs) for l in cnncomp.load(file).layers()]
        again = load_text(text, str(file.with_name(file.stem + "_again.cnn")))  # imports resolve beside it
        assert [(l.name, l.op, l.shape, l.attrs) for l in again.layers()] == layers


def test_ascii_identifiers():
    from cnncomp.ir.identifiers import ascii_identifier, is_identifier

    assert ascii_identifier("é") == "e" and ascii_identifier("entrée_图像") == "entree_"
    assert ascii_identifier("input.1") == "input_1" and ascii_identifier("1x") == "t_1x"
    assert ascii_identifier("in") == "in_" and ascii_identifier("图像", "input") == "input_"  # the fallback, off the keyword
    assert all(is_identifier(ascii_identifier(n)) for n in ("é", "图", "in", "9", "a-b", "", "x y"))
    assert not is_identifier("é") and not is_identifier("repeat") and is_identifier("x_1")


# ---- long chains and names from outside (issue 21 item 6) ------------------------------------------------

def chain_model(n: int, input_name: str = "x", output_name: str = "y", c: int = 2) -> onnx.ModelProto:
    """n Conv+Relu pairs in one chain, as a plain exporter writes them."""
    rng = np.random.default_rng(0)
    nodes, inits, previous = [], [], input_name
    for i in range(n):
        w = numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.4).astype(np.float32), f"conv{i}.weight")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [previous, w.name], [f"c{i}"], name=f"/conv{i}/Conv",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        out = output_name if i == n - 1 else f"r{i}"
        nodes.append(helper.make_node("Relu", [f"c{i}"], [out], name=f"/relu{i}/Relu"))
        previous = out
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                                                             [1, c, 6, 6])],
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def ort_outputs(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_a_chain_of_150_conv_relu_imports_as_several_statements(tmp_path):
    model = chain_model(150)
    onnx.save(model, tmp_path / "chain.onnx")
    result = cnncomp.import_onnx(tmp_path / "chain.onnx", tmp_path / "chain.cnn")
    program = parse(result.text, "chain.cnn")  # each statement under the parser's limit
    assignments = [s for s in program.stmts if isinstance(s, ast.Assign)]
    assert len(assignments) >= 2, result.text
    assert len(result.graph) == 301
    x = np.random.default_rng(1).uniform(-1, 1, (1, 2, 6, 6)).astype(np.float32)
    again = cnncomp.compile(tmp_path / "chain.cnn", weights=tmp_path / "chain.safetensors", opt_level=0)
    np.testing.assert_array_equal(ort_outputs(again, {"x": x})[0], ort_outputs(model, {"x": x})[0])


def test_a_long_chain_is_split_at_the_statement_limit():
    """A chain of 800 layers (written in four statements, which the writer joins into one chain) is written
    in statements that each stay under the language's limit."""
    graph = load_text(f"network long\ninput x: [1, 2, 5, 5]\n"
                      + "\n".join(f"y{j} = {'x' if j == 0 else f'y{j - 1}'}\n"
                                  + "\n".join(f"    -> conv(2, k=3, p=1) as c{j}x{i} -> relu as r{j}x{i}"
                                              for i in range(100)) for j in range(4))
                      + "\noutput y3\n", "long.cnn")
    text = write_cnn(graph)
    statements = [s for s in parse(text, "w.cnn").stmts if isinstance(s, ast.Assign)]
    assert len(statements) >= 4
    assert load_text(text, "w.cnn").outputs == graph.outputs
    assert MAX_STATEMENT_TOKENS == 2000  # the limit the writer's MAX_TOKENS (1,000) keeps half of


def test_non_ascii_names_import_as_ascii_identifiers(tmp_path):
    from cnncomp.cli import main

    model = chain_model(3, input_name="entrée_图像", output_name="выход")
    onnx.save(model, tmp_path / "m.onnx")
    out = tmp_path / "é.cnn"
    assert main(["import", str(tmp_path / "m.onnx"), "-o", str(out)]) == 0
    text = out.read_text()
    assert text.isascii(), text
    assert "network e\n" in text and "input entree_: [1, 2, 6, 6]" in text and "output output_" in text
    graph = cnncomp.load(out)
    x = np.random.default_rng(2).uniform(-1, 1, (1, 2, 6, 6)).astype(np.float32)
    again = cnncomp.compile(out, weights=tmp_path / "é.safetensors", opt_level=0)
    got = ort_outputs(again, {graph.inputs[0]: x})[0]
    np.testing.assert_array_equal(got, ort_outputs(model, {"entrée_图像": x})[0])


# ---- --emit torch translates the graph (issue 16 item 4) ------------------------------------------------

def test_emit_torch_of_a_rewritten_graph_parses_no_text(monkeypatch, tmp_path):
    from cnncomp.emit.torch.emit import emit_torch
    from cnncomp.frontend.cnn import loader, parser
    from cnncomp.pipeline import optimize

    (tmp_path / "net.cnn").write_text("network net\ninput x: [N, 3, 8, 8]\n"
                                      "y = x -> conv(4, k=3) -> bn -> relu -> gap -> flatten -> linear(2)\noutput y\n")
    compiled = optimize(tmp_path / "net.cnn", opt_level=1)
    assert "fold-bn" in compiled.graph.meta["passes"]
    loader.standard_blocks()  # parsed once and cached, before the text parsers are taken away

    def refuse(*args, **kwargs):
        raise AssertionError("--emit torch parsed text")

    monkeypatch.setattr(parser, "parse", refuse)
    monkeypatch.setattr(loader, "parse", refuse)
    notices: list[str] = []
    source = emit_torch(compiled.graph, notices=notices)
    assert "class Net" in source and len(notices) == 1 and "fold-bn" in notices[0]


# ---- readable imported specs (issue 17 item 4) ----------------------------------------------------------

def export_torchvision(name: str, path: Path):
    """A hand-written torchvision model (tests/torchvision_models.py), exported as test_import_torch does."""
    import sys
    import warnings

    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torchvision_models as tvm

    model = tvm.BUILDERS[name](seed=0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    with torch.no_grad():
        return x.numpy(), model(x).numpy()


def test_mobilenet_v2_imports_with_nested_blocks_and_repeats(tmp_path):
    """Each inverted residual is one block whose body calls the block of its `conv` sequence and ends in
    its residual add; runs of them are repeats: 41 lines where the writer without nesting wrote 53."""
    x, eager = export_torchvision("mobilenet_v2", tmp_path / "m.onnx")
    result = cnncomp.import_onnx(tmp_path / "m.onnx", tmp_path / "m.cnn")
    program = parse(result.text, "m.cnn")
    blocks = {s.name: s for s in program.stmts if isinstance(s, ast.BlockDef)}
    calls = {name: [st.func for stmt in b.body for st in getattr(stmt.value, "stages", []) if st.func in blocks]
             for name, b in blocks.items()}
    residual = [name for name, b in blocks.items() if calls[name] and "add(" in unparse_block(b)]
    assert residual, result.text  # a block calling a block, with the add inside
    assert "conv_block" in blocks  # named after the module it comes from (features.K.conv)
    assert result.text.count("repeat ") >= 3 and len(result.text.splitlines()) <= 45, result.text
    assert "add(" not in result.text.split("\ny = ")[1]  # no residual add left at the top level
    compiled = cnncomp.compile(tmp_path / "m.cnn", weights=tmp_path / "m.safetensors", opt_level=1)
    got = ort_outputs(compiled, {"x": x})[0]
    np.testing.assert_allclose(got, eager, rtol=1e-4, atol=1e-4 * float(np.abs(eager).max()))


def unparse_block(block: ast.BlockDef) -> str:
    return unparse(ast.Program("<block>", [block]))


def test_block_calls_pass_arguments_by_name(tmp_path):
    export_torchvision("resnet18", tmp_path / "r.onnx")
    text = import_model(tmp_path / "r.onnx").text
    assert 'repeat 2 as i { layer_block(conv1_out=64) as "layer1.{i}" }' in text, text
    assert "-> layer_block2(conv1_out=128) as layer2.0" in text, text


def test_names_without_module_paths_are_kept_as_they_are():
    """A PaddlePaddle export names its nodes Conv_0, Relu_1, ...: the layers keep those names, and no block is
    made of them."""
    rng = np.random.default_rng(0)
    nodes, inits, previous = [], [], "image"
    for i in range(3):
        w = numpy_helper.from_array(rng.standard_normal((4, 4 if i else 3, 3, 3)).astype(np.float32), f"conv2d_{i}.w_0")
        b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), f"conv2d_{i}.b_0")
        inits += [w, b]
        nodes.append(helper.make_node("Conv", [previous, w.name, b.name], [f"conv2d_{i}.tmp_0"], name=f"Conv_{2 * i}",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv2d_{i}.tmp_0"], [f"relu_{i}.tmp_0"], name=f"Relu_{2 * i + 1}"))
        previous = f"relu_{i}.tmp_0"
    graph = helper.make_graph(nodes, "paddle", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    result = import_model(model, "paddle")
    assert "-> conv(4, 3, p=1) as Conv_2\n" in result.text and "block " not in result.text, result.text
    assert {"Conv_0.weight", "Conv_2.bias", "Conv_4.weight"} <= set(result.weights)


def test_an_optimized_graph_keeps_its_blocks_and_repeats(tmp_path):
    """`compile --emit cnn -O1`: fold-bn rewrote every block, and the writer finds them again by their
    layer names (nested, with repeats); the text elaborates to the optimized graph."""
    from cnncomp.cli import main
    from cnncomp.pipeline import optimize

    spec = ROOT / "specs" / "mobilenet_v2.cnn"
    out = tmp_path / "m.cnn"
    assert main(["compile", str(spec), "-O1", "--emit", "cnn", "-o", str(out)]) == 0
    text = out.read_text()
    assert "fold-bn" in text.splitlines()[0]  # the header names the passes
    assert text.count("block ") >= 3 and "repeat 3 as i {" in text, text
    graph = optimize(spec, opt_level=1).graph
    again = load_text(text, "m.cnn")
    assert [(l.name, l.op, l.shape, l.attrs) for l in again.layers()] == \
           [(l.name, l.op, l.shape, l.attrs) for l in graph.layers()]


def test_efficientnet_stages_import_as_repeats(tmp_path):
    """An EfficientNet stage (MBConv blocks, the first one different) is a call and a `repeat` of the
    residual MBConv block, which calls the blocks of its conv-norm-activation and squeeze-and-excitation."""
    import sys
    import warnings

    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from efficientnet_like import efficientnet

    model = efficientnet()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp_path / "e.onnx"), opset_version=17, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    result = cnncomp.import_onnx(tmp_path / "e.onnx", tmp_path / "e.cnn")
    text = result.text
    assert 'as "features.4.{i + 1}" }' in text and 'as "features.5.{i + 1}" }' in text, text
    assert "block_block(" in text and "block__block" not in text, text  # named after its module, `block`
    assert len(text.splitlines()) < 55, text
    compiled = cnncomp.compile(tmp_path / "e.cnn", weights=tmp_path / "e.safetensors", opt_level=1)
    with torch.no_grad():
        eager = model(x).numpy()
    np.testing.assert_allclose(ort_outputs(compiled, {"x": x.numpy()})[0], eager, rtol=1e-4,
                               atol=1e-4 * float(np.abs(eager).max()))
