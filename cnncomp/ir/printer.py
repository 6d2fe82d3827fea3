"""--emit cnn: print a LayerGraph (after passes) as a valid .cnn spec.

Every layer keeps its name through `as NAME`, so `parse(emit(graph))` elaborates to
the same layers, shapes and weight names, and weights saved from the optimized
graph load into the printed spec. Chains of single-use layers become one pipeline.
"""

from __future__ import annotations

from typing import Callable

import re

from cnncomp.ir.graph import LayerGraph
from cnncomp.ops.registry import REQUIRED, fmt_value, get_op

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
KEYWORDS = {"network", "input", "output", "let", "block", "return", "repeat", "as", "if", "then", "else", "and",
             "or", "not", "true", "false", "import", "in", "where"}


def stage_name(name: str) -> str:
    """A layer name as written after `as`: bare when it is a dotted identifier, else quoted."""
    first = name.split(".")[0]
    if _DOTTED.match(name) and first not in KEYWORDS:
        return name
    return '"' + name + '"'


def _where(rules: dict, shape: tuple, stated: set[str]) -> str:
    """` where H % 16 == 0, H >= 64` for the constrained symbols an input introduces."""
    parts = []
    for d in shape:
        name = str(d)
        if isinstance(d, int) or name in stated or name not in rules:
            continue
        stated.add(name)
        rule = rules[name]
        if rule.get("multiple_of", 1) > 1:
            parts.append(f"{name} % {rule['multiple_of']} == {rule.get('remainder', 0)}")
        if rule.get("min", 1) > 1:
            parts.append(f"{name} >= {rule['min']}")
    return " where " + ", ".join(parts) if parts else ""


def _call(op_name: str, args: dict, tensor_args: list[str]) -> str:
    op = get_op(op_name)
    # required tensor arguments go first, by position; optional ones (deform_conv's mask) by name
    tensor_params = [p for p in op.params if p.kind == "tensor"]
    optional = [i < len(tensor_params) and tensor_params[i].default is not REQUIRED for i in range(len(tensor_args))]
    parts = [var for var, named in zip(tensor_args, optional) if not named]
    named_tensors = [f"{tensor_params[i].name}={var}" for i, (var, named) in enumerate(zip(tensor_args, optional))
                     if named]
    parts += value_arguments(op, args) + named_tensors
    return f"{op_name}({', '.join(parts)})" if parts else op_name


def value_arguments(op, args: dict, fmt: Callable[[object], str] = fmt_value) -> list[str]:
    """An op's value arguments as written in a stage: the required ones in order, positionally; the others
    by name, unless they are the default."""
    defaults = {p.name: p.default for p in op.params}
    leading = [p.name for p in op.params if p.kind != "tensor"]
    positional = []
    for key in leading:
        if defaults[key] is REQUIRED and key in args and leading[len(positional)] == key:
            positional.append(key)
    parts = [fmt(args[k]) for k in positional]
    for key, value in args.items():
        if key in positional:
            continue
        if key in defaults and defaults[key] == value and not isinstance(value, tuple):
            continue
        parts.append(f"{key}={fmt(value)}")
    return parts


def emit_cnn(graph: LayerGraph, header: str = "") -> str:
    """The graph as .cnn source text."""
    variables: dict[str, str] = {}  # layer name -> the variable bound to it
    taken = set(KEYWORDS)
    output_of = dict(zip(graph.outputs, graph.output_names))
    taken |= set(graph.output_names)

    def variable_for(layer_name: str) -> str:
        if layer_name in output_of:
            return output_of[layer_name]
        base = re.sub(r"\W", "_", layer_name)
        if not _IDENT.match(base):
            base = "t_" + base
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    lines = [f"# {line}" for line in header.splitlines()] + [f"network {graph.name}", ""]
    stated: set[str] = set()  # symbols whose constraints an earlier input line states
    for name in graph.inputs:
        layer = graph.layer(name)
        dtype = "" if layer.dtype == "float32" else layer.dtype
        lines.append(f"input {name}: {dtype}[{', '.join(str(d) for d in layer.shape)}]"
                     + _where(graph.meta.get("symbols", {}), layer.shape, stated))
        variables[name] = name
        taken.add(name)
    lines.append("")
    chains: list[list[str]] = []  # each: [head variable, stage, stage, ...], bound to the tail's variable
    chain_of: dict[str, int] = {}
    tails: list[str] = []
    for layer in graph.layers():
        if layer.op == "input":
            continue
        op = get_op(layer.op)
        ins = graph.input_names(layer.name)
        args = op.spec_args(layer.attrs)
        stage_suffix = f" as {stage_name(layer.name)}"
        extendable = (len(ins) == 1 and ins[0] in chain_of and tails[chain_of[ins[0]]] == ins[0]
                      and len(graph.users(ins[0])) == 1 and ins[0] not in output_of)
        if extendable:
            index = chain_of.pop(ins[0])
            chains[index].append(_call(layer.op, args, []) + stage_suffix)
        else:
            for src in ins:  # the chains that end here are closed: bind their variables
                if src in chain_of:
                    chain_of.pop(src)
            head = variables.setdefault(ins[0], variable_for(ins[0]))
            tensor_args = [variables.setdefault(s, variable_for(s)) for s in ins[1:]]
            chains.append([head, _call(layer.op, args, tensor_args) + stage_suffix])
            tails.append("")
            index = len(chains) - 1
        chain_of[layer.name] = index
        tails[index] = layer.name
    for chain, tail in zip(chains, tails):
        var = variables.setdefault(tail, variable_for(tail))
        stages = "\n    -> ".join(chain[1:])
        lines.append(f"{var} = {chain[0]} -> {stages}")
    lines += ["", "output " + ", ".join(graph.output_names)]
    return "\n".join(lines) + "\n"
