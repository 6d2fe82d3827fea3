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
template that holds a smaller repeated block (a ResNet stage made of its
residual blocks, MobileNetV2's inverted residual around its `conv` sequence)
comes after them, so that blocks follow the model's smallest repeated modules.
Then blocks nest: a module path whose subgraph holds whole instances already
chosen (and only parts of none) is an instance whose body calls them (`items`:
its layers and its nested calls, in order), and such templates are chosen the
same way, round after round, where they save lines once their definition is
counted. Layers keep their names: inside a block every layer (and every nested
call) is written `as` its relative name, so the elaborated spec names it `P.rel`.

A block is named after the module it comes from: the last part of its path
that is not an index, digits dropped (`layer1.0` -> `layer_block`,
`features.3.conv` -> `conv_block`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cnncomp.ir.graph import LayerGraph
from cnncomp.ir.identifiers import ascii_identifier
from cnncomp.ops.registry import get_op

MIN_BLOCK_LAYERS = 2
MAX_NESTING = 4  # rounds of blocks made of blocks


@dataclass
class Instance:
    """One occurrence of a block: its path, entry tensor, exit layer and members (every layer, those of nested
    calls included) in order; `items` is what its body writes: a layer name or a nested Call."""

    prefix: str
    entry: str
    exit: str
    members: list[str]
    values: list = field(default_factory=list)  # argument values, in the template's position order
    items: list = field(default_factory=list)
    template: "Template | None" = None  # once chosen
    parent: "Instance | None" = None  # the instance whose body calls this one (None: called at the top)

    def __post_init__(self):
        self.items = self.items or list(self.members)


@dataclass
class Call:
    """A nested block call inside another block's body."""

    template: "Template"
    instance: Instance


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
    """The chosen templates, each with its instances (in graph order) and parameters; callees first."""
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
    flat: dict[str, Instance] = {}
    for prefix, members in groups.items():
        if len(members) >= MIN_BLOCK_LAYERS:
            instance = _instance(graph, prefix, sorted(members, key=order.__getitem__))
            if instance is not None:
                flat[prefix] = instance
    templates: dict[tuple, Template] = {}
    for instance in flat.values():
        key = _template_key(graph, instance)
        templates.setdefault(key, Template(key, [])).instances.append(instance)
    repeated = [t for t in templates.values() if len(t.instances) >= 2]
    in_smaller: dict[str, int] = {}  # layer -> the most dots of a repeated instance path holding it
    for t in repeated:
        for inst in t.instances:
            for m in inst.members:
                in_smaller[m] = max(in_smaller.get(m, -1), inst.prefix.count("."))

    def composite(t: Template) -> bool:  # holds a smaller repeated block: prefer that one, then nest
        inst = t.instances[0]
        return any(in_smaller.get(m, -1) > inst.prefix.count(".") for m in inst.members)

    def saved(t: Template) -> int:  # lines saved: n copies of m layers become m lines and n calls
        return (len(t.instances) - 1) * (len(t.instances[0].members) - 1)

    chosen: list[Template] = []
    covered: set[str] = set()
    ranked = sorted(repeated, key=lambda t: (composite(t), -saved(t), order[t.instances[0].members[0]]))
    for template in ranked:
        free = [i for i in template.instances if not covered.intersection(i.members)]
        if len(free) < 2:
            continue
        _choose(graph, template, free, order)
        covered.update(m for i in free for m in i.members)
        chosen.append(template)
    for _ in range(MAX_NESTING):
        nested = _nesting_round(graph, flat, chosen, order)
        if not nested:
            break
        chosen += nested
    _name_templates(chosen)
    return chosen


def _choose(graph: LayerGraph, template: Template, instances: list[Instance], order: dict[str, int]) -> None:
    template.instances = sorted(instances, key=lambda i: order[i.members[0]])
    for inst in template.instances:
        inst.template = template
        for item in inst.items:
            if isinstance(item, Call):
                item.instance.parent = inst
    _parameterize(graph, template)


def _nesting_round(graph: LayerGraph, flat: dict[str, Instance], chosen: list[Template],
                   order: dict[str, int]) -> list[Template]:
    """Templates whose instances call instances already chosen (see the module doc), chosen greedily where
    they save lines with their definition counted."""
    top = [inst for t in chosen for inst in t.instances if inst.parent is None]
    under: dict[str, list[Instance]] = {}  # module path -> the chosen instances below it
    owner: dict[str, Instance] = {}  # layer -> the chosen instance holding it
    for c in top:
        parts = c.prefix.split(".")
        for depth in range(1, len(parts)):
            under.setdefault(".".join(parts[:depth]), []).append(c)
        owner.update((m, c) for m in c.members)
    chosen_paths = {c.prefix for c in top}
    templates: dict[tuple, Template] = {}
    for prefix, inst in flat.items():
        inside = under.get(prefix, [])
        if not inside or prefix in chosen_paths:
            continue
        inside_ids = {id(c) for c in inside}
        if any(m in owner and id(owner[m]) not in inside_ids for m in inst.members):
            continue  # part of another block: no clean nesting
        first_of = {c.members[0]: c for c in inside}
        held = {m for c in inside for m in c.members}
        items: list = []
        for m in inst.members:
            if m in first_of:
                items.append(Call(first_of[m].template, first_of[m]))
            elif m not in held:
                items.append(m)
        candidate = Instance(prefix, inst.entry, inst.exit, inst.members, items=items)
        templates.setdefault(_template_key(graph, candidate), Template((), [])).instances.append(candidate)

    def net_saved(t: Template, n: int) -> int:  # n bodies of k items become n calls and a definition of k + 3 lines
        k = len(t.instances[0].items)
        return n * k - (n + k + 3)

    found: list[Template] = []
    claimed: set[str] = set()
    ranked = sorted((t for t in templates.values() if len(t.instances) >= 2),
                    key=lambda t: (-net_saved(t, len(t.instances)), order[t.instances[0].members[0]]))
    for template in ranked:
        free = [i for i in template.instances if not claimed.intersection(i.members)]
        if len(free) < 2 or net_saved(template, len(free)) <= 0:
            continue
        template.key = _template_key(graph, free[0])
        _choose(graph, template, free, order)
        claimed.update(m for i in free for m in i.members)
        found.append(template)
    return found


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
    if not get_op(graph.layer(merge).op).variadic:  # only a merge can be called as a head expression
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
    for item in instance.items:
        wiring = tuple("in" if src == instance.entry else rel[src] for src in item_inputs(graph, item))
        if isinstance(item, Call):
            rows.append((rel[item.instance.exit], ("block", id(item.template)), tuple(item_args(graph, item)),
                         wiring, graph.layer(item.instance.exit).dtype))
        else:
            layer = graph.layer(item)
            rows.append((rel[item], layer.op, tuple(spec_args(graph, item)), wiring, layer.dtype))
    return tuple(rows)


def relative_names(instance: Instance) -> dict[str, str]:
    """Each item's output layer -> its name inside the block: a layer's relative name ('' for a merge named
    after the call itself), a nested call's relative path."""
    cut = len(instance.prefix) + 1
    return {item_output(item): (item.instance.prefix if isinstance(item, Call) else item)[cut:]
            for item in instance.items}


def item_output(item) -> str:
    """The layer whose output an item gives: the layer itself, or a nested call's exit."""
    return item.instance.exit if isinstance(item, Call) else item


def item_inputs(graph: LayerGraph, item) -> list[str]:
    return [item.instance.entry] if isinstance(item, Call) else graph.input_names(item)


def item_args(graph: LayerGraph, item) -> dict:
    """A layer's arguments, or a nested call's values by parameter name."""
    if isinstance(item, Call):
        return dict(zip(block_params(item.template), call_values(item.template, item.instance)))
    return spec_args(graph, item)


def _parameterize(graph: LayerGraph, template: Template) -> None:
    first = template.instances[0]
    template.positions = [(i, key) for i, item in enumerate(first.items) for key in item_args(graph, item)]
    rel = list(relative_names(first).values())
    for inst in template.instances:
        args = [item_args(graph, item) for item in inst.items]
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
            last = rel[i].split(".")[-1]
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
        parts = [p for p in template.instances[0].prefix.split(".") if not p.isdigit()]
        module = "".join(c for c in (parts[-1] if parts else "") if not c.isdigit()).strip("_")
        base = ascii_identifier(f"{module or 'unit'}_block")  # `block` alone would be a keyword
        name, k = base, 2
        while name in taken:
            name, k = f"{base}{k}", k + 1
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
