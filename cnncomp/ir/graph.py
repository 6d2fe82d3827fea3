"""LayerGraph: the layer graph over networkx, with every shape known.

A node is a layer, keyed by its layer name. Its data is a `Layer`. An edge
`u -> v` carries `slot`, the position of u's output among v's inputs; it is a
multigraph because a merge may read one tensor twice (`y + y`, `concat(y, y)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import networkx as nx

from cnncomp.errors import CallSite, CnnError, Loc

Dim = int | str  # an int, or a symbolic (dynamic) name such as "N"
Shape = tuple[Dim, ...]


def unique_name(base: str, taken) -> str:
    """`base`, or the first of base_1, base_2... that is not in `taken`."""
    name, i = base, 1
    while name in taken:
        name = f"{base}_{i}"
        i += 1
    return name


@dataclass
class Layer:
    """One node of the graph: a layer, a merge or a graph input."""

    name: str
    op: str
    attrs: dict[str, Any]
    shape: Shape
    dtype: str = "float32"
    loc: Loc | None = None
    chain: tuple[CallSite, ...] = ()
    weights: dict[str, Any] = field(default_factory=dict)  # suffix -> WeightSpec
    args: dict[str, Any] = field(default_factory=dict)  # the arguments as written, for --emit cnn

    @property
    def where(self) -> str:
        """The spec location `file:line:col`, or '' when unknown."""
        return str(self.loc) if self.loc else ""


class LayerGraph:
    """A network: layers keyed by name, ordered inputs and outputs."""

    def __init__(self, name: str = "network"):
        self.name = name
        self.g = nx.MultiDiGraph()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.output_names: list[str] = []  # the spec names of the outputs, in order
        self.meta: dict[str, Any] = {}

    # ---- building ---------------------------------------------------------

    def add_layer(self, layer: Layer, inputs: list[str] = ()) -> Layer:
        if layer.name in self.g:
            raise CnnError(f"layer name '{layer.name}' is used twice", layer.loc, layer.chain)
        self.g.add_node(layer.name, layer=layer)
        for slot, src in enumerate(inputs):
            self.g.add_edge(src, layer.name, slot=slot)
        if layer.op == "input":
            self.inputs.append(layer.name)
        return layer

    # ---- rewriting (for passes) -------------------------------------------

    def redirect_users(self, old: str, new: str) -> None:
        """Make every user of `old` read `new` instead (same slots); outputs follow."""
        for _, user, key, slot in list(self.g.out_edges(old, keys=True, data="slot")):
            self.g.remove_edge(old, user, key)
            self.g.add_edge(new, user, slot=slot)
        self.outputs = [new if o == old else o for o in self.outputs]

    def remove_layer(self, name: str) -> None:
        """Remove a layer that nothing reads any more."""
        if self.users(name) or name in self.outputs:
            raise ValueError(f"layer '{name}' still has users")
        self.g.remove_node(name)
        if name in self.inputs:
            self.inputs.remove(name)

    def fresh_name(self, base: str) -> str:
        """A layer name not in the graph: base, or base_1, base_2..."""
        return unique_name(base, self.g)

    # ---- reading ----------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self.g

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def layer(self, name: str) -> Layer:
        return self.g.nodes[name]["layer"]

    def layers(self) -> Iterator[Layer]:
        """Layers in a deterministic topological order (spec order where free)."""
        order = {n: i for i, n in enumerate(self.g.nodes)}
        for name in nx.lexicographical_topological_sort(self.g, key=order.__getitem__):
            yield self.layer(name)

    def input_names(self, name: str) -> list[str]:
        """The layers feeding `name`, ordered by slot."""
        preds = sorted(self.g.in_edges(name, data="slot"), key=lambda e: e[2])
        return [u for u, _, _ in preds]

    def inputs_of(self, name: str) -> list[Layer]:
        return [self.layer(u) for u in self.input_names(name)]

    def users(self, name: str) -> list[str]:
        return list(self.g.successors(name))

    def copy(self) -> "LayerGraph":
        import copy as _copy

        new = LayerGraph(self.name)
        new.g = self.g.copy()
        for n in new.g.nodes:
            layer = _copy.copy(self.g.nodes[n]["layer"])
            layer.attrs, layer.weights, layer.args = dict(layer.attrs), dict(layer.weights), dict(layer.args)
            new.g.nodes[n]["layer"] = layer
        new.inputs = list(self.inputs)
        new.outputs = list(self.outputs)
        new.output_names = list(self.output_names)
        new.meta = _copy.deepcopy(self.meta)
        return new

    # ---- checking ---------------------------------------------------------

    def lint(self) -> None:
        """Check the invariants; raise AssertionError saying what broke and how to fix it."""
        from cnncomp.ops.registry import OPS

        if not nx.is_directed_acyclic_graph(self.g):
            cycle = nx.find_cycle(self.g)
            raise AssertionError(f"graph has a cycle through {cycle}: a pass rewired an edge backwards")
        for name in self.g.nodes:
            data = self.g.nodes[name]
            if "layer" not in data:
                raise AssertionError(f"node '{name}' has no Layer: add nodes with add_layer()")
            layer = data["layer"]
            if layer.name != name:
                raise AssertionError(f"node '{name}' holds layer named '{layer.name}'")
            if layer.op != "input" and layer.op not in OPS:
                raise AssertionError(f"layer '{name}' has unknown op '{layer.op}'")
            if layer.shape is None or any(d is None for d in layer.shape):
                raise AssertionError(f"layer '{name}' has no shape")
            slots = sorted(s for _, _, s in self.g.in_edges(name, data="slot"))
            if slots != list(range(len(slots))):
                raise AssertionError(f"layer '{name}' has input slots {slots}, expected 0..{len(slots) - 1}")
        for out in self.outputs:
            if out not in self.g:
                raise AssertionError(f"output '{out}' is not a layer of the graph")
