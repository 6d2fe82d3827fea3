"""Repeated subgraphs of an imported graph, found by their layer names, as blocks.

A module path P (a name prefix such as `layer1.0`) is a block instance when
the layers named `P.*` form a single-entry, single-exit subgraph: one tensor
from outside feeds them (the block's `in`) and one of them (the exit) is all
that the rest of the graph reads. Two instances share a template when their
layers have the same relative names, ops, argument keys and wiring; their
argument values may differ, and each value that differs between instances
becomes a block parameter (positions whose values agree in every instance
share one parameter, as `mid` serves conv1 and conv2 of a bottleneck).

Templates with at least two instances are chosen greedily, those that save
the most lines first, never overlapping an instance already chosen; a
template made only of smaller repeated blocks (a ResNet stage made of its
residual blocks) comes after them, so that blocks follow the model's
smallest repeated modules. Layers keep their names: inside a block every layer is
written `as` its relative name, so the elaborated spec names it `P.rel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cnncomp.ir.graph import LayerGraph
from cnncomp.ops.registry import get_op

MIN_BLOCK_LAYERS = 2


@dataclass
class Instance:
    """One occurrence of a block: its path, entry tensor, exit layer and members in order."""

    prefix: str
    entry: str
    exit: str
    members: list[str]
    values: list = field(default_factory=list)  # argument values, in the template's position order


@dataclass
class Template:
    """The shared structure of a block's instances."""

    key: tuple
    instances: list[Instance]
    positions: list[tuple[int, str]] = field(default_factory=list)  # (member index, argument key)
    params: list[str] = field(default_factory=list)  # parameter name per position ('' = a constant)
    name: str = ""


def spec_args(graph: LayerGraph, name: str) -> dict:
    layer = graph.layer(name)
    return get_op(layer.op).spec_args(layer.attrs)


def find_blocks(graph: LayerGraph) -> list[Template]:
    """The chosen templates, each with its instances (in graph order) and parameters."""
    order = {layer.name: i for i, layer in enumerate(graph.layers())}
    groups: dict[str, list[str]] = {}
    for name in order:
        if graph.layer(name).op == "input":
            continue
        parts = name.split(".")
        for depth in range(1, len(parts)):
            groups.setdefault(".".join(parts[:depth]), []).append(name)
    for prefix, members in groups.items():
        if prefix in graph:  # a merge in a block's return statement is named after the call itself
            members.append(prefix)
    templates: dict[tuple, Template] = {}
    for prefix, members in groups.items():
        if len(members) < MIN_BLOCK_LAYERS:
            continue
        instance = _instance(graph, prefix, sorted(members, key=order.__getitem__))
        if instance is None:
            continue
        key = _template_key(graph, instance)
        templates.setdefault(key, Template(key, [])).instances.append(instance)
    repeated = [t for t in templates.values() if len(t.instances) >= 2]
    in_smaller: dict[str, int] = {}  # layer -> the most dots of a repeated instance path holding it
    for t in repeated:
        for inst in t.instances:
            for m in inst.members:
                in_smaller[m] = max(in_smaller.get(m, -1), inst.prefix.count("."))

    def composite(t: Template) -> bool:  # every layer lies in a smaller repeated block: prefer those
        inst = t.instances[0]
        return all(in_smaller.get(m, -1) > inst.prefix.count(".") for m in inst.members)

    def saved(t: Template) -> int:  # lines saved: n copies of m layers become m lines and n calls
        return (len(t.instances) - 1) * (len(t.instances[0].members) - 1)

    chosen: list[Template] = []
    covered: set[str] = set()
    ranked = sorted(repeated, key=lambda t: (composite(t), -saved(t), order[t.instances[0].members[0]]))
    for template in ranked:
        free = [i for i in template.instances if not covered.intersection(i.members)]
        if len(free) < 2:
            continue
        template.instances = sorted(free, key=lambda i: order[i.members[0]])
        covered.update(m for i in free for m in i.members)
        _parameterize(graph, template)
        chosen.append(template)
    _name_templates(chosen)
    return chosen


def _instance(graph: LayerGraph, prefix: str, members: list[str]) -> Instance | None:
    inside = set(members)
    sources = {src for m in members for src in graph.input_names(m) if src not in inside}
    exits = [m for m in members if m in graph.outputs or any(u not in inside for u in graph.users(m))]
    if len(sources) != 1 or len(exits) != 1 or exits[0] != members[-1]:
        return None
    if prefix in inside and not _heads_return(graph, prefix, exits[0]):
        return None
    return Instance(prefix, sources.pop(), exits[0], members)


def _heads_return(graph: LayerGraph, merge: str, exit_: str) -> bool:
    """Whether a layer named after the block is a merge from which one chain of layers leads to the exit
    (so that it can head the block's return pipeline, where the language names it after the call)."""
    if graph.layer(merge).op not in ("add", "mul", "concat"):
        return False
    node = merge
    while node != exit_:
        users = graph.users(node)
        if len(users) != 1 or len(graph.input_names(users[0])) != 1:
            return False
        node = users[0]
    return True


def _template_key(graph: LayerGraph, instance: Instance) -> tuple:
    rel = relative_names(instance)
    rows = []
    for m in instance.members:
        layer = graph.layer(m)
        wiring = tuple("in" if src == instance.entry else rel[src] for src in graph.input_names(m))
        rows.append((rel[m], layer.op, tuple(spec_args(graph, m)), wiring, layer.dtype))
    return tuple(rows)


def relative_names(instance: Instance) -> dict[str, str]:
    """Member name -> its name inside the block ('' for a merge named after the call itself)."""
    return {m: m[len(instance.prefix) + 1:] for m in instance.members}


def _parameterize(graph: LayerGraph, template: Template) -> None:
    first = template.instances[0]
    template.positions = [(i, key) for i, m in enumerate(first.members) for key in spec_args(graph, m)]
    for inst in template.instances:
        args = [spec_args(graph, m) for m in inst.members]
        inst.values = [args[i][key] for i, key in template.positions]
    columns = list(zip(*(inst.values for inst in template.instances)))
    names: dict[tuple, str] = {}
    taken = {"in"}
    for (i, key), column in zip(template.positions, columns):
        if len(set(map(repr, column))) == 1:
            template.params.append("")
            continue
        signature = tuple(map(repr, column))
        if signature not in names:
            last = first.members[i][len(first.prefix) + 1:].split(".")[-1]
            base = f"{last}_{key}" if last and not last.isdigit() else key
            base = "".join(c if c.isalnum() or c == "_" else "_" for c in base)
            if base[0].isdigit():
                base = "p_" + base
            name, k = base, 2
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            taken.add(name)
            names[signature] = name
        template.params.append(names[signature])


def _name_templates(templates: list[Template]) -> None:
    taken: set[str] = set()
    for template in templates:
        head = template.instances[0].prefix.split(".")[0]
        base = "".join(c for c in head if not c.isdigit()).strip("_") or "unit"
        name, k = f"{base}_block", 2
        while name in taken:
            name, k = f"{base}_block{k}", k + 1
        taken.add(name)
        template.name = name


def block_params(template: Template) -> list[str]:
    """The template's parameter names, in order of first use."""
    seen: list[str] = []
    for p in template.params:
        if p and p not in seen:
            seen.append(p)
    return seen


def call_values(template: Template, inst: Instance) -> list:
    """The instance's value for each of the template's parameters."""
    values = {}
    for p, v in zip(template.params, inst.values):
        if p:
            values.setdefault(p, v)
    return [values[p] for p in block_params(template)]
