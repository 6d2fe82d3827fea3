"""The one .cnn writer's entry points: `--emit cnn`, `cnncomp import` and `--emit torch` all come here.

`write_program` is the graph as a program (blocks and repeats found), checked:
its text, parsed and elaborated again, must give the graph's layers (names,
ops, attributes, shapes, wiring) and outputs. When the block finder's program
does not reproduce the graph, the flat listing (every layer named with `as`,
one statement per chain) is used instead; when neither does, that is a bug of
the writer, reported with both reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from cnncomp.emit.cnn.syntax import unparse
from cnncomp.ir.identifiers import ascii_identifier, is_identifier
from cnncomp.emit.cnn.writer import spec_program
from cnncomp.errors import CnnError
from cnncomp.frontend.cnn import ast
from cnncomp.ir.graph import LayerGraph, unique_name


@dataclass
class Written:
    """A graph written as a spec: the program, its text, and the graph the text elaborates to."""

    program: ast.Program
    text: str
    graph: LayerGraph


def write_cnn(graph: LayerGraph, header: str = "", file: str | None = None) -> str:
    """The graph as .cnn text (--emit cnn): blocks and repeats where the graph repeats a module, checked."""
    return write_program(graph, header, file).text


def write_program(graph: LayerGraph, header: str = "", file: str | None = None, blocks: bool = True) -> Written:
    """The graph as a checked program and its text (header as leading comment lines); see the module doc.
    `blocks=False`: the flat listing only."""
    file = file or f"<{graph.name}.cnn>"
    graph = identifier_inputs(graph)
    problems = [] if blocks else ["not tried"]
    for blocks in (True, False)[0 if blocks else 1:]:
        program = spec_program(graph, file, blocks=blocks)
        text = unparse(program, header)
        again, problem = _elaborate_same(text, graph, file)
        if again is not None:
            return Written(program, text, again)
        problems.append(problem)
    raise CnnError(f"{graph.name}: the written spec does not reproduce the graph ({problems[0]}; flat: "
                   f"{problems[1]}); please report this with the model")


def identifier_inputs(graph: LayerGraph) -> LayerGraph:
    """The graph, or a copy whose inputs are renamed to identifiers (an input's layer is its variable)."""
    if all(is_identifier(name) for name in graph.inputs):
        return graph
    renamed = graph.copy()
    taken = {layer.name for layer in graph.layers()}
    mapping = {}
    for name in graph.inputs:
        if not is_identifier(name):
            new = unique_name(ascii_identifier(name, "input"), taken)
            taken.add(new)
            mapping[name] = new
    nx.relabel_nodes(renamed.g, mapping, copy=False)
    for old, new in mapping.items():
        renamed.layer(new).name = new
    renamed.inputs = [mapping.get(n, n) for n in renamed.inputs]
    renamed.outputs = [mapping.get(n, n) for n in renamed.outputs]
    return renamed


def _elaborate_same(text: str, want: LayerGraph, file: str) -> tuple[LayerGraph | None, str]:
    """The spec text elaborated, if it has the graph's layers, ops, shapes and wiring; else why not."""
    from cnncomp.frontend.cnn.loader import load_text

    try:
        spec = load_text(text, file)
    except CnnError as err:
        return None, err.message
    for layer in want.layers():
        if layer.name not in spec:
            return None, f"layer '{layer.name}' is missing"
        other = spec.layer(layer.name)
        if (other.op, other.shape, other.attrs) != (layer.op, layer.shape, layer.attrs):
            return None, f"layer '{layer.name}' differs"
        if spec.input_names(layer.name) != want.input_names(layer.name):
            return None, f"layer '{layer.name}' reads other inputs"
    if len(spec) != len(want) or spec.outputs != want.outputs:
        return None, "the layers or outputs differ"
    return spec, ""
