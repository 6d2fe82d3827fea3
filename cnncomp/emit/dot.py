"""DOT pictures of a LayerGraph (Graphviz), blocks as clusters.

One box per layer: its name (relative to the block instance it sits in), its
op with the arguments that differ from the defaults, its output shape and its
parameter count. Layers made by a block call sit in a cluster labeled with the
block's name and the call's name (`bottleneck  layer1.0`); clusters nest as
block calls do (a layer's `chain`). The instances a `repeat` makes from one
call site share a dashed cluster (`layer1: 3 x bottleneck`).

Merges (add, mul, concat) are drawn as ellipses, and the edges into them are
dark red, so that skip connections and branch joins stand out. Edges carry a
shape only where it says something the boxes do not: into a concat, and into a
merge whose inputs differ in shape.

`to_dot` returns the text; `render` runs Graphviz's `dot` program to write
SVG, PNG or PDF (a clear error when `dot` is not installed).
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cnncomp.errors import CnnError
from cnncomp.ops.registry import get_op

STYLE = {  # Op.category (or a graph input) -> fill colour
    "input": "#d9d9d9", "conv": "#cfe2f3", "norm": "#fff2cc", "act": "#d9ead3", "pool": "#fce5cd",
    "merge": "#f4cccc", "linear": "#d9d2e9", "other": "#efefef",
}
CLUSTER_FILL = ("#f8f9fb", "#eef1f6", "#e3e8f0", "#d8dfea")
FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": None, ".gv": None}


@dataclass
class Cluster:
    """A block instance (or the instances of one repeated call site) and what it holds."""

    key: str
    label: str  # Graphviz HTML
    prefix: str  # the dotted name prefix of its layers
    dashed: bool = False
    depth: int = 0
    layers: list = field(default_factory=list)
    children: list["Cluster"] = field(default_factory=list)


# ---- clusters --------------------------------------------------------------------


def _components(name: str) -> list[str]:
    return name.split(".")


def _common_prefix(names: list[str]) -> list[str]:
    parts = [_components(n) for n in names]
    out = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        out.append(column[0])
    return out


def _split_instances(layers: list, depth: int) -> list[tuple[str, list]]:
    """Split the layers of one call site into the instances a repeat made; (prefix, layers) each.

    The instances of a repeat are named PREFIX.0, PREFIX.1, ... and each holds the block's body again,
    so the same places in the block (a layer's location, or the location of the nested block call that
    made it) recur across them; the parts of one instance never share a place that way (except through
    a repeat inside the block)."""
    common = _common_prefix([l.name for l in layers])
    n = len(common)
    groups: dict[str | None, list] = {}
    for layer in layers:
        parts = _components(layer.name)
        groups.setdefault(parts[n] if len(parts) > n else None, []).append(layer)
    keys = [k for k in groups if k is not None]
    if len(keys) > 1:
        seen: dict = {}
        overlap = False
        for k in keys:
            for loc in {_place(l, depth) for l in groups[k]} - {None}:
                if loc in seen and seen[loc] != k:
                    overlap = True
                seen[loc] = k
        if overlap:
            stray = groups.pop(None, [])
            out = [(".".join(common + [k]), groups[k]) for k in keys]
            if stray:
                out[-1][1].extend(stray)
            return out
    return [(".".join(common), layers)]


def _place(layer, depth: int) -> str | None:
    """Where in the block body at chain depth `depth` a layer comes from: its own location, or its nested call's."""
    if len(layer.chain) > depth + 1:
        return str(layer.chain[depth + 1].loc)
    return str(layer.loc) if layer.loc is not None else None


def _label(name: str, what: str) -> str:
    """A cluster label in Graphviz HTML: the call's name in bold, then the block (or the repeat)."""
    return f"<b>{html.escape(name)}</b>  ({html.escape(what)})" if name != what else f"<b>{html.escape(name)}</b>"


def build_clusters(graph) -> Cluster:
    """The cluster tree of a graph: the root holds the layers outside any block call."""
    root = Cluster("root", graph.name, "", depth=0)
    counter = [0]

    def fill(cluster: Cluster, layers: list, depth: int, named: str) -> None:
        """named: the prefix of the nearest named ancestor, that labels are written relative to."""
        groups: dict = {}
        for layer in layers:
            if len(layer.chain) <= depth:
                cluster.layers.append(layer)
            else:
                groups.setdefault(layer.chain[depth], []).append(layer)
        for site, members in groups.items():
            instances = _split_instances(members, depth)
            parent, inner_named = cluster, named
            if len(instances) > 1:
                counter[0] += 1
                common = ".".join(_common_prefix([p for p, _ in instances]))
                parent = Cluster(f"cluster_{counter[0]}", _label(_relative(common, named) or site.block,
                                                                    f"{len(instances)} x {site.block}"),
                                 common, dashed=True, depth=cluster.depth + 1)
                cluster.children.append(parent)
            for prefix, inst_layers in instances:
                counter[0] += 1
                child = Cluster(f"cluster_{counter[0]}", _label(_relative(prefix, inner_named) or site.block,
                                                               site.block), prefix, depth=parent.depth + 1)
                parent.children.append(child)
                fill(child, inst_layers, depth + 1, prefix)

    fill(root, [l for l in graph.layers()], 0, "")
    return root


# ---- labels ----------------------------------------------------------------------


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt_value(x) for x in v) + ")"
    return str(v)


def op_text(layer) -> str:
    """The op with its non-default arguments, as a spec writes it: conv(64, k=7, s=2, p=3)."""
    from cnncomp.ops.registry import REQUIRED

    op = get_op(layer.op)
    if op is None or not layer.args:
        return layer.op
    defaults = {p.name: p.default for p in op.params}
    parts = []
    for key, value in layer.args.items():
        default = defaults.get(key, REQUIRED)
        if default is REQUIRED:
            parts.append(_fmt_value(value))
        elif value != default and not (isinstance(default, (int, float)) and isinstance(value, tuple)
                                       and all(v == default for v in value)):
            parts.append(f"{key}={_fmt_value(value)}")
    return f"{layer.op}({', '.join(parts)})" if parts else layer.op


def _shape(shape, batch: bool = True) -> str:
    dims = [str(d) for d in shape]
    return "[" + ",".join(dims if batch else dims[1:]) + "]"


def _count(n: int) -> str:
    for unit, scale in (("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _relative(name: str, prefix: str) -> str:
    if prefix and name.startswith(prefix + "."):
        return name[len(prefix) + 1:]
    return name


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _node_line(layer, prefix: str, outputs: dict) -> str:
    from cnncomp.ir.cost import layer_params

    e = html.escape
    name = _relative(layer.name, prefix)
    category = "input" if layer.op == "input" else get_op(layer.op).category
    rows = [f"<b>{e(name)}</b>"]
    if layer.op == "input":
        rows.append(f'<font point-size="9">input {e(_shape(layer.shape))} {e(layer.dtype)}</font>')
    else:
        rows.append(f'<font point-size="9">{e(op_text(layer))}</font>')
        params = layer_params(layer)
        info = _shape(layer.shape) + (f"  {_count(params)} params" if params else "")
        rows.append(f'<font point-size="8" color="#555555">{e(info)}</font>')
    if layer.name in outputs:
        rows.append(f'<font point-size="9" color="#990000"><b>output {e(outputs[layer.name])}</b></font>')
    shape = {"merge": "ellipse", "input": "invhouse"}.get(category, "box")
    style = "filled,rounded" if shape == "box" else "filled"
    penwidth = "1.6" if category == "merge" else "0.8"
    tooltip = f"{layer.name}: {layer.op} {_shape(layer.shape)}" + (f" at {layer.where}" if layer.where else "")
    return (f'{_q(layer.name)} [label=<{"<br/>".join(rows)}>, shape={shape}, style="{style}", '
            f'fillcolor="{STYLE[category]}", penwidth={penwidth}, tooltip={_q(tooltip)}];')


# ---- the DOT text ----------------------------------------------------------------


def to_dot(graph, title: str | None = None, rankdir: str = "TB") -> str:
    """The graph as DOT text: one box per layer, block calls as nested clusters."""
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise CnnError(f"rankdir must be TB, LR, BT or RL, got '{rankdir}'")
    outputs = {layer: name for name, layer in zip(graph.output_names, graph.outputs)}
    lines = [f"digraph {_q(graph.name)} {{",
             f'  graph [rankdir={rankdir}, fontname="Helvetica", fontsize=12, nodesep=0.25, ranksep=0.3, '
             f'labelloc=t, label=<<b>{html.escape(title or graph.name)}</b>>, newrank=true];',
             '  node [fontname="Helvetica", fontsize=10, margin="0.12,0.04", height=0.3];',
             '  edge [fontname="Helvetica", fontsize=8, color="#555555", arrowsize=0.6];']

    def emit(cluster: Cluster, indent: str) -> None:
        for layer in cluster.layers:
            lines.append(indent + _node_line(layer, cluster.prefix, outputs))
        for child in cluster.children:
            fill = CLUSTER_FILL[min(child.depth - 1, len(CLUSTER_FILL) - 1)]
            style = '"dashed,rounded"' if child.dashed else '"filled,rounded"'
            lines.append(f"{indent}subgraph {child.key} {{")
            lines.append(f'{indent}  graph [label=<{child.label}>, style={style}, '
                         f'fillcolor="{fill}", color="{"#7f8fa6" if not child.dashed else "#4a5a70"}", '
                         f'labeljust=l, fontsize={11 if child.dashed else 10}];')
            emit(child, indent + "  ")
            lines.append(f"{indent}}}")

    emit(build_clusters(graph), "  ")
    for layer in graph.layers():
        ins = graph.inputs_of(layer.name)
        merge = layer.op != "input" and get_op(layer.op).category == "merge"
        labeled = merge and (layer.op == "concat" or len({tuple(t.shape) for t in ins}) > 1)
        for src in ins:
            attrs = []
            if labeled:
                attrs.append(f'label={_q(_shape(src.shape, batch=False))}')
            if merge:
                attrs.append('color="#990000"')
            lines.append(f"  {_q(src.name)} -> {_q(layer.name)}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---- rendering -------------------------------------------------------------------


def dot_program() -> str | None:
    return shutil.which("dot")


def output_format(path: str | Path) -> str | None:
    """'svg', 'png' or 'pdf' for a rendered picture, None for DOT text; an unknown suffix is an error."""
    if str(path) == "-":  # standard output: DOT text
        return None
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise CnnError(f"cannot tell the picture format of '{path}': use .svg, .png, .pdf, or .dot for DOT text")
    return FORMATS[suffix]


def render(dot_text: str, path: str | Path, timeout: float = 300.0) -> None:
    """Write the picture (format from the suffix) through Graphviz's `dot`, atomically; DOT text needs no Graphviz."""
    from cnncomp.fileio import atomic_write, write_text

    fmt = output_format(path)
    if fmt is None:
        write_text(path, dot_text)
        return
    program = dot_program()
    if program is None:
        raise CnnError("Graphviz's `dot` program is not installed (or not on PATH), so no picture can be drawn; "
                       "install Graphviz (apt-get install graphviz, brew install graphviz, conda install graphviz), "
                       "or write DOT text with -o FILE.dot")

    def write(tmp: str) -> None:
        try:
            result = subprocess.run([program, f"-T{fmt}", "-o", tmp], input=dot_text.encode(), capture_output=True,
                                    timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CnnError(f"Graphviz's dot took longer than {timeout:g} s; try --rankdir LR or write .dot") from None
        if result.returncode != 0 or not os.path.exists(tmp):
            detail = result.stderr.decode(errors="replace").strip().splitlines()
            raise CnnError(f"Graphviz's dot failed (exit {result.returncode}): {detail[-1] if detail else 'no message'}")

    atomic_write(path, write)
