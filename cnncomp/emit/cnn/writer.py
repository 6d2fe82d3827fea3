"""A LayerGraph as a .cnn program: blocks for repeated subgraphs, `repeat` for runs of them.

Statements are pipelines: a stage whose only input is the tail of an open
pipeline, read by nothing else, extends it (up to `MAX_TOKENS` tokens, half
the language's limit for a statement: a longer chain is continued in a new
statement). Every layer keeps its name through `as NAME`; a block call is
named `as PREFIX` (its layers are named under it), and a run of calls
`PARENT.k, PARENT.k+1, ...` of one block (or `PARENTk` for names such as
`denselayer1`) becomes `repeat n as i { blk(...) as "PARENT.{i + k}" }`, a
parameter that changes only in the first call written `if i == 0 then A else
B` (one such argument at most: separate calls read better than several).

Arguments are written through the registry: an op's tensor arguments that
lead its parameter list by position, the others by name; its required value
arguments in order; the rest by name unless they hold the default. A new op
needs nothing here.

The result is an AST (frontend/cnn/ast.py): `--emit torch` translates it and
syntax.unparse writes it as text, so both read the same blocks and repeats.
Names are the language's ASCII identifiers (ir/identifiers.py): a
variable, the network's name, an input or an output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from cnncomp.emit.cnn.blocks import Call, Instance, Template, block_params, call_values, find_blocks, item_args, \
    item_inputs, item_output, relative_names, spec_args
from cnncomp.emit.cnn.syntax import NOWHERE, expression, stage_name, stage_text, value_expr
from cnncomp.ir.identifiers import KEYWORDS, ascii_identifier
from cnncomp.frontend.cnn import ast
from cnncomp.ir.graph import LayerGraph, unique_name
from cnncomp.ops.registry import REQUIRED, fmt_value, get_op

MAX_TOKENS = 1000  # per pipeline statement; the parser refuses statements over 2,000 tokens
_TOKEN = re.compile(r'"[^"]*"|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*|[0-9.]+(?:[eE][+-]?[0-9]+)?|->|//|[=!<>]=|\S')


@dataclass
class Unit:
    """One stage to write: a layer or a block call. `name` is the layer (or the call's exit) it stands for."""

    name: str
    inputs: list[str]
    make: Callable[[list[ast.Expr]], object]  # the stage (or a head expression) given its tensor arguments
    call: tuple[Template, Instance] | None = None
    head: bool = False  # written as a pipeline's head expression, all inputs as arguments (a merge named by its block)
    hint: str = ""  # what to name a variable holding it (a call: its path, not its exit layer's)


class Param:
    """A block parameter standing where an argument value would be."""

    def __init__(self, name: str):
        self.name = name


def _value(value) -> ast.Expr:
    return ast.Name(value.name, NOWHERE) if isinstance(value, Param) else value_expr(value)


def value_arguments(op, args: dict) -> list[ast.Arg]:
    """An op's value arguments: the required ones in order, positionally; the others by name, unless they
    are the default."""
    defaults = {p.name: p.default for p in op.params}
    leading = [p.name for p in op.params if p.kind != "tensor"]
    positional: list[str] = []
    for key in leading:
        if defaults[key] is REQUIRED and key in args and leading[len(positional)] == key:
            positional.append(key)
    out = [ast.Arg(None, _value(args[k]), NOWHERE) for k in positional]
    for key, value in args.items():
        if key in positional or key in defaults and defaults[key] == value and not isinstance(value, tuple):
            continue
        out.append(ast.Arg(key, _value(value), NOWHERE))
    return out


def layer_arguments(op_name: str, args: dict, tensors: list[ast.Expr]) -> list[ast.Arg]:
    """A layer's arguments: its tensor arguments (by position while they lead its parameters, else by
    name, after the values) and its value arguments."""
    op = get_op(op_name)
    tensor_params = [p.name for p in op.params if p.kind == "tensor"]
    leading, named = [], []
    for i, t in enumerate(tensors):
        if op.variadic or i < len(tensor_params) and all(p.kind == "tensor" for p in op.params[:i + 1]):
            leading.append(ast.Arg(None, t, NOWHERE))
        else:
            named.append(ast.Arg(tensor_params[i], t, NOWHERE))
    return leading + value_arguments(op, args) + named


def _stage(op_name: str, args: dict, alias: str | None) -> Callable[[list[ast.Expr]], ast.LayerStage]:
    def make(tensors: list[ast.Expr]) -> ast.LayerStage:
        return ast.LayerStage(op_name, layer_arguments(op_name, args, tensors),
                              stage_name(alias) if alias is not None else None, NOWHERE)
    return make


def _head(op_name: str, args: dict) -> Callable[[list[ast.Expr]], ast.Call]:
    return lambda tensors: ast.Call(op_name, layer_arguments(op_name, args, tensors), NOWHERE)


# ---- the program -----------------------------------------------------------------------------------------


def spec_program(graph: LayerGraph, file: str, blocks: bool = True) -> ast.Program:
    """The graph as a program (blocks and repeats found when `blocks`; else one statement per chain).
    Blocks are defined callees first, each before the first block that calls it."""
    templates = find_blocks(graph) if blocks else []
    stmts: list = [ast.Network(ascii_identifier(graph.name, "network"), NOWHERE)]
    taken = set(KEYWORDS) | {t.name for t in templates}
    variables: dict[str, str] = {}
    stated: set[str] = set()  # symbols whose constraints an earlier input line states
    for name in graph.inputs:
        layer = graph.layer(name)
        var = _fresh(ascii_identifier(name, "input"), taken)
        variables[name] = var
        dtype = None if layer.dtype == "float32" else layer.dtype
        dims = [value_expr(d) if isinstance(d, int) else ast.Name(ascii_identifier(str(d), "N"), NOWHERE)
                for d in layer.shape]
        stmts.append(ast.Input(var, dtype, dims, NOWHERE, _where(graph.meta.get("symbols", {}), layer.shape,
                                                                  stated)))
    for template in templates:
        stmts.append(_block_def(graph, template))
    output_of: dict[str, str] = {}
    for layer_name, out in zip(graph.outputs, graph.output_names):
        output_of.setdefault(layer_name, _fresh(ascii_identifier(out, "output"), taken))
    stmts += _statements(_top_units(graph, templates), variables, output_of, taken, None)
    stmts.append(ast.Output([ast.Name(output_of[o], NOWHERE) for o in graph.outputs], NOWHERE))
    return ast.Program(file, stmts)


def _where(rules: dict, shape: tuple, stated: set[str]) -> list[ast.Expr]:
    """`H % 16 == 0`, `H >= 64`: the constraints on the symbols an input introduces (stated once)."""
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
    return [expression(text) for text in parts]


def _fresh(base: str, taken: set[str]) -> str:
    """unique_name, and the name taken."""
    name = unique_name(base, taken)
    taken.add(name)
    return name


def _top_units(graph: LayerGraph, templates: list[Template]) -> list[Unit]:
    first_of: dict[str, tuple[Template, Instance]] = {}
    covered: set[str] = set()
    for t in templates:
        for inst in t.instances:
            if inst.parent is None:  # called at the top; a nested instance is called by its parent's body
                first_of[inst.members[0]] = (t, inst)
                covered.update(inst.members)
    units = []
    for layer in graph.layers():
        if layer.op == "input":
            continue
        if layer.name in first_of:
            t, inst = first_of[layer.name]
            units.append(_call_unit(t, inst, dict(zip(block_params(t), call_values(t, inst))), inst.prefix))
        elif layer.name not in covered:
            units.append(_layer_unit(graph, layer.name, layer.name, spec_args(graph, layer.name)))
    return units


def block_arguments(template: Template, values: dict) -> list[ast.Arg]:
    """A block call's arguments, by name: a block's parameters are named after the layers they set."""
    return [ast.Arg(p, _value(values[p]), NOWHERE) for p in block_params(template)]


def _call_unit(template: Template, inst: Instance, values: dict, written_name: str) -> Unit:
    args = block_arguments(template, values)
    alias = stage_name(written_name)
    return Unit(inst.exit, [inst.entry], lambda _: ast.LayerStage(template.name, args, alias, NOWHERE),
                (template, inst), hint=written_name)


def _layer_unit(graph: LayerGraph, name: str, written_name: str, args: dict) -> Unit:
    return Unit(name, graph.input_names(name), _stage(graph.layer(name).op, args, written_name))


def _block_def(graph: LayerGraph, template: Template) -> ast.BlockDef:
    first = template.instances[0]
    rel = relative_names(first)
    units = []
    for i, item in enumerate(first.items):
        args = dict(item_args(graph, item))
        for (j, key), p in zip(template.positions, template.params):
            if j == i and p:
                args[key] = Param(p)
        name = rel[item_output(item)]
        if isinstance(item, Call):
            unit = _call_unit(item.template, item.instance, args, name)
            unit.call = None  # a nested call is written as it is, never folded into a repeat
        elif name:
            unit = _layer_unit(graph, item, name, args)
        else:
            unit = Unit(item, graph.input_names(item), _head(graph.layer(item).op, args), head=True)
        unit.inputs = ["in" if s == first.entry else rel[s] for s in item_inputs(graph, item)]
        unit.name = name
        units.append(unit)
    params = block_params(template)
    taken = set(KEYWORDS) | set(params)
    body = _statements(units, {"in": "in"}, {}, taken, rel[first.exit])
    return ast.BlockDef(template.name, [ast.Param(p, None, NOWHERE) for p in params], body, NOWHERE)


def _tokens(stage) -> int:
    return len(_TOKEN.findall(stage_text(stage))) + 1  # and its `->`


def _statements(units: list[Unit], variables: dict[str, str], output_of: dict[str, str], taken: set[str],
                returned: str | None) -> list:
    """Pipelines for the units, in order; `returned` (in a block) is the layer the last pipeline returns."""
    taken = set(taken) | set(variables.values()) | set(output_of.values())
    hints = {u.name: u.hint for u in units if u.hint}
    users: dict[str, int] = {}
    for u in units:
        for s in u.inputs:
            users[s] = users.get(s, 0) + 1

    def var(name: str) -> ast.Expr:
        if name == "in":
            return ast.In(NOWHERE)
        if name not in variables:
            variables[name] = output_of.get(name) or _fresh(ascii_identifier(hints.get(name, name)), taken)
        return ast.Name(variables[name], NOWHERE)

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
    stmts = []
    for chain, head in zip(chains, heads):
        tail = chain[-1].name
        if chain[0].head:
            head_expr = chain[0].make([var(s) for s in chain[0].inputs])
            chain = chain[1:]
        else:
            head_expr = var(head)
        stages: list = []
        budget, previous = MAX_TOKENS, None
        for unit, last in _with_repeats(chain):
            stage = unit if isinstance(unit, ast.RepeatStage) else unit.make([var(s) for s in unit.inputs[1:]])
            cost = _tokens(stage)
            if stages and cost > budget:  # a long chain: bind what it has so far and go on from there
                stmts.append(ast.Assign(var(previous).id, ast.Pipeline(head_expr, stages, NOWHERE), NOWHERE))
                head_expr, stages, budget = var(previous), [], MAX_TOKENS
            stages.append(stage)
            budget -= cost
            previous = last
        value = ast.Pipeline(head_expr, stages, NOWHERE) if stages else head_expr
        if tail == returned:
            stmts.append(ast.Return(value, NOWHERE))
        else:
            stmts.append(ast.Assign(var(tail).id, value, NOWHERE))
    if returned is not None and not isinstance(stmts[-1], ast.Return):
        stmts.append(ast.Return(var(returned), NOWHERE))
    return stmts


def _with_repeats(chain: list[Unit]):
    """(stage, the layer it ends at) for the chain; runs of calls of one block under PARENT.k, PARENT.k+1, ...
    as one `repeat`. Each stage's tensor arguments are read through `var` when it is made."""
    i = 0
    while i < len(chain):
        run = _run_from(chain, i)
        if len(run) < 2:
            unit = chain[i]
            yield unit, unit.name
            i += 1
            continue
        yield _repeat(run), run[-1].name
        i += len(run)


def _split_index(prefix: str) -> tuple[str, int] | None:
    """('layer1.', 2) for 'layer1.2'; ('features.denseblock1.denselayer', 3) for '...denselayer3'."""
    found = re.match(r"(.*\D)(\d+)$", prefix)
    return (found.group(1), int(found.group(2))) if found else None


def _run_from(chain: list[Unit], start: int) -> list[Unit]:
    """The calls from `start` that one `repeat` can write: one block, consecutive indices under one parent,
    the same values in every call after the first, which may differ in one argument (linear in the run)."""
    first = chain[start]
    if first.call is None or _split_index(first.call[1].prefix) is None:
        return [first]
    template = first.call[0]
    parent, k = _split_index(first.call[1].prefix)
    first_values = _values_key(template, first)
    run, rest_values = [first], None
    for unit in chain[start + 1:]:
        if unit.call is None or unit.call[0] is not template:
            break
        if _split_index(unit.call[1].prefix) != (parent, k + len(run)):
            break
        values = _values_key(template, unit)
        if rest_values is None:
            if sum(a != b for a, b in zip(first_values, values)) > 1:
                break  # more than one argument changing: separate calls read better
            rest_values = values
        elif values != rest_values:
            break
        run.append(unit)
    return run


def _values_key(template: Template, unit: Unit) -> tuple[str, ...]:
    return tuple(fmt_value(v) for v in call_values(template, unit.call[1]))


def _repeat_args(template: Template, run: list[Unit]) -> list[ast.Expr] | None:
    """The argument expressions of a repeat over the run, or None when a value changes after the first call."""
    columns = list(zip(*(call_values(template, u.call[1]) for u in run)))
    if sum(len({fmt_value(v) for v in column}) > 1 for column in columns) > 1:
        return None  # more than one argument changing: separate calls read better
    exprs: list[ast.Expr] = []
    for column in columns:
        rest = {fmt_value(v) for v in column[1:]}
        if len(rest) != 1:
            return None
        if fmt_value(column[0]) in rest:
            exprs.append(value_expr(column[0]))
        else:
            first_call = ast.BinOp("==", ast.Name("i", NOWHERE), ast.Num(0, NOWHERE), NOWHERE)
            exprs.append(ast.IfExpr(first_call, value_expr(column[0]), value_expr(column[1]), NOWHERE))
    return exprs


def _repeat(run: list[Unit]) -> ast.RepeatStage:
    template = run[0].call[0]
    parent, k = _split_index(run[0].call[1].prefix)
    args = [ast.Arg(p, e, NOWHERE) for p, e in zip(block_params(template), _repeat_args(template, run))]
    index = "{i}" if k == 0 else "{i + %d}" % k
    call = ast.LayerStage(template.name, args, ast.StageName(parent + index, True, NOWHERE), NOWHERE)
    return ast.RepeatStage(ast.Num(len(run), NOWHERE), "i", [call], NOWHERE)
