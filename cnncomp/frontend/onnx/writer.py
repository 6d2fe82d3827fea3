"""The imported graph as readable .cnn text: blocks for repeated subgraphs, `repeat` for runs of them.

Statements are pipelines: a stage whose only input is the tail of an open
pipeline, read by nothing else, extends it. Every layer keeps its imported
name through `as NAME`; a block call is named `as PREFIX` (its layers are
named under it), and a run of calls `PARENT.k, PARENT.k+1, ...` of one block
(or `PARENTk` for names such as `denselayer1`) becomes
`repeat n as i { blk(...) as "PARENT.{i + k}" }`, a parameter that
changes only in the first call written `if i == 0 then A else B` (one such
argument at most: separate calls read better than several).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cnncomp.frontend.onnx.blocks import (
    Instance, Template, block_params, call_values, find_blocks, relative_names, spec_args,
)
from cnncomp.ir.graph import LayerGraph
from cnncomp.ir.printer import KEYWORDS, stage_name, value_arguments
from cnncomp.ops.registry import fmt_value, get_op


@dataclass
class Unit:
    """One stage to write: a layer or a block call. `name` is the layer (or the call's exit) it stands for."""

    name: str
    inputs: list[str]
    text: str  # the stage without its tensor arguments' variables filled in: {0}, {1}, ... for inputs 1..
    call: tuple[Template, Instance] | None = None
    head: bool = False  # written as a pipeline's head expression, all inputs as arguments (a merge named by its block)
    hint: str = ""  # what to name a variable holding it (a call: its path, not its exit layer's)


class Param:
    """A block parameter standing where an argument value would be."""

    def __init__(self, name: str):
        self.name = name


def layer_call(op_name: str, args: dict, n_tensor_args: int) -> str:
    """`op(args)`: required arguments positionally, others by name unless they are the default."""
    op = get_op(op_name)
    tensor_params = [p.name for p in op.params if p.kind == "tensor"]
    parts = []
    for i in range(n_tensor_args):  # tensor arguments: by position while they lead, by name after that
        if op.variadic or op.params[i].kind == "tensor" and i < len(tensor_params) \
                and all(p.kind == "tensor" for p in op.params[:i + 1]):
            parts.append("{%d}" % i)
        else:
            parts.append(f"{tensor_params[i]}={{{i}}}")
    parts += value_arguments(op, args, _value)
    return f"{op_name}({', '.join(parts)})" if parts else op_name


def _value(value) -> str:
    return value.name if isinstance(value, Param) else fmt_value(value)


def write_spec(graph: LayerGraph, header: str = "") -> str:
    """Spec text for an imported graph."""
    templates = find_blocks(graph)
    lines = [f"# {line}" for line in header.splitlines()] + [f"network {graph.name}", ""]
    for name in graph.inputs:
        layer = graph.layer(name)
        dtype = "" if layer.dtype == "float32" else layer.dtype
        lines.append(f"input {name}: {dtype}[{', '.join(str(d) for d in layer.shape)}]")
    lines.append("")
    for template in templates:
        lines += _block_text(graph, template) + [""]
    units = _top_units(graph, templates)
    taken = set(KEYWORDS) | set(graph.inputs) | set(graph.output_names) | {t.name for t in templates}
    lines += _statements(graph, units, {n: n for n in graph.inputs}, dict(zip(graph.outputs, graph.output_names)),
                         taken, None)
    lines += ["", "output " + ", ".join(graph.output_names)]
    return "\n".join(lines) + "\n"


def _top_units(graph: LayerGraph, templates: list[Template]) -> list[Unit]:
    first_of: dict[str, tuple[Template, Instance]] = {}
    covered: set[str] = set()
    for t in templates:
        for inst in t.instances:
            first_of[inst.members[0]] = (t, inst)
            covered.update(inst.members)
    units = []
    for layer in graph.layers():
        if layer.op == "input":
            continue
        if layer.name in first_of:
            t, inst = first_of[layer.name]
            args = ", ".join(fmt_value(v) for v in call_values(t, inst))
            units.append(Unit(inst.exit, [inst.entry], f"{t.name}({args})" if args else t.name, (t, inst),
                              hint=inst.prefix))
        elif layer.name not in covered:
            units.append(_layer_unit(graph, layer.name, layer.name, spec_args(graph, layer.name)))
    return units


def _layer_unit(graph: LayerGraph, name: str, written_name: str, args: dict) -> Unit:
    ins = graph.input_names(name)
    text = layer_call(graph.layer(name).op, args, len(ins) - 1) + f" as {stage_name(written_name)}"
    return Unit(name, ins, text)


def _block_text(graph: LayerGraph, template: Template) -> list[str]:
    first = template.instances[0]
    rel = relative_names(first)
    units = []
    for i, m in enumerate(first.members):
        args = dict(spec_args(graph, m))
        for (j, key), p in zip(template.positions, template.params):
            if j == i and p:
                args[key] = Param(p)
        if rel[m]:
            unit = _layer_unit(graph, m, rel[m], args)
        else:
            ins = graph.input_names(m)
            unit = Unit(m, ins, layer_call(graph.layer(m).op, args, len(ins)), head=True)
        unit.inputs = ["in" if s == first.entry else rel[s] for s in unit.inputs]
        unit.name = rel[m]
        units.append(unit)
    params = block_params(template)
    taken = set(KEYWORDS) | set(params)
    body = _statements(graph, units, {"in": "in"}, {}, taken, rel[first.exit])
    indented = ["    " + line for statement in body for line in statement.split("\n")]
    return [f"block {template.name}({', '.join(params)}) {{"] + indented + ["}"]


def _statements(graph: LayerGraph, units: list[Unit], variables: dict[str, str], output_of: dict[str, str],
                taken: set[str], returned: str | None) -> list[str]:
    """Pipelines for the units, in order; `returned` (in a block) is the layer the last pipeline returns."""
    taken = set(taken)
    hints = {u.name: u.hint for u in units if u.hint}
    users: dict[str, int] = {}
    for u in units:
        for s in u.inputs:
            users[s] = users.get(s, 0) + 1

    def variable_for(name: str) -> str:
        if name in output_of:
            return output_of[name]
        base = re.sub(r"\W", "_", hints.get(name, name))
        if not re.match(r"[A-Za-z_]", base):
            base = "t_" + base
        var, k = base, 1
        while var in taken:
            var, k = f"{base}_{k}", k + 1
        taken.add(var)
        return var

    chains: list[list[Unit]] = []
    heads: list[str] = []
    tail_chain: dict[str, int] = {}  # the layer at the tail of an open chain -> its index
    for unit in units:
        src = unit.inputs[0]
        extend = (not unit.head and len(unit.inputs) == 1 and src in tail_chain and users.get(src, 0) == 1
                  and src not in output_of and src != returned)
        if extend:
            index = tail_chain.pop(src)
            chains[index].append(unit)
        else:
            for s in unit.inputs:
                tail_chain.pop(s, None)
            chains.append([unit])
            heads.append(src)
            index = len(chains) - 1
        tail_chain[unit.name] = index
    lines = []
    for chain, head in zip(chains, heads):
        stages = []
        tail = chain[-1].name
        if chain[0].head:
            head_var = chain[0].text.format(*[variables.setdefault(s, variable_for(s)) for s in chain[0].inputs])
            chain = chain[1:]
        else:
            head_var = variables.setdefault(head, variable_for(head))
        for stage in _with_repeats(chain):
            if isinstance(stage, str):
                stages.append(stage)
                continue
            tensor_vars = [variables.setdefault(s, variable_for(s)) for s in stage.inputs[1:]]
            stages.append(stage.text.format(*tensor_vars))
        body = " -> ".join([head_var] + stages[:1]) + "".join("\n    -> " + st for st in stages[1:])
        if tail == returned:
            lines.append(f"return {body}")
        else:
            lines.append(f"{variables.setdefault(tail, variable_for(tail))} = {body}")
    if returned is not None and not lines[-1].startswith("return "):
        lines.append(f"return {variables[returned]}")
    return lines


def _with_repeats(chain: list[Unit]) -> list:
    """The chain's stages, runs of calls of one block under PARENT.k, PARENT.k+1, ... as `repeat` strings."""
    out: list = []
    i = 0
    while i < len(chain):
        run = _run_from(chain, i)
        if len(run) < 2:
            unit = chain[i]
            out.append(unit if unit.call is None else _called(unit))
            i += 1
            continue
        out.append(_repeat_text(run))
        i += len(run)
    return out


def _called(unit: Unit) -> Unit:
    return Unit(unit.name, unit.inputs, f"{unit.text} as {stage_name(unit.call[1].prefix)}", unit.call)


def _split_index(prefix: str) -> tuple[str, int] | None:
    """('layer1.', 2) for 'layer1.2'; ('features.denseblock1.denselayer', 3) for '...denselayer3'."""
    found = re.match(r"(.*\D)(\d+)$", prefix)
    return (found.group(1), int(found.group(2))) if found else None


def _run_from(chain: list[Unit], start: int) -> list[Unit]:
    first = chain[start]
    if first.call is None or _split_index(first.call[1].prefix) is None:
        return [first]
    template = first.call[0]
    parent, k = _split_index(first.call[1].prefix)
    run = [first]
    for unit in chain[start + 1:]:
        if unit.call is None or unit.call[0] is not template:
            break
        if _split_index(unit.call[1].prefix) != (parent, k + len(run)):
            break
        if _repeat_args(template, run + [unit]) is None:
            break
        run.append(unit)
    return run


def _repeat_args(template: Template, run: list[Unit]) -> list[str] | None:
    """The argument expressions of a repeat over the run, or None when a value changes after the first call."""
    columns = list(zip(*(call_values(template, u.call[1]) for u in run)))
    if sum(len({fmt_value(v) for v in column}) > 1 for column in columns) > 1:
        return None  # more than one argument changing: separate calls read better
    exprs = []
    for column in columns:
        rest = {fmt_value(v) for v in column[1:]}
        if len(rest) != 1:
            return None
        if fmt_value(column[0]) in rest:
            exprs.append(fmt_value(column[0]))
        else:
            exprs.append(f"if i == 0 then {fmt_value(column[0])} else {rest.pop()}")
    return exprs


def _repeat_text(run: list[Unit]) -> str:
    template = run[0].call[0]
    parent, k = _split_index(run[0].call[1].prefix)
    exprs = _repeat_args(template, run)
    args = ", ".join(e if not e.startswith("if ") or len(exprs) == 1 else f"({e})" for e in exprs)
    call = f"{template.name}({args})" if exprs else template.name
    index = "{i}" if k == 0 else "{i + %d}" % k
    return f'repeat {len(run)} as i {{ {call} as "{parent}{index}" }}'
