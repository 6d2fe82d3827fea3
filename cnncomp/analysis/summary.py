"""Per-layer summary of a network: shapes, parameters, MACs, receptive fields, lint warnings."""

from __future__ import annotations

from dataclasses import dataclass, field

from cnncomp.ir.cost import layer_macs, layer_params
from cnncomp.ir.graph import LayerGraph
from cnncomp.ops import dims
from cnncomp.ops.dims import is_static
from cnncomp.ops.registry import fmt_shape, get_op


@dataclass
class Field:
    """Receptive field of a tensor along each spatial dim: size and effective stride (jump), in input pixels."""

    size: tuple[float, ...]
    jump: tuple[float, ...]


@dataclass
class LayerRow:
    name: str
    op: str
    output_shape: tuple
    params: int
    macs: int
    receptive_field: list
    effective_stride: list
    where: str


@dataclass
class Summary:
    network: str
    inputs: dict
    outputs: dict
    rows: list[LayerRow]
    warnings: list = field(default_factory=list)

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def total_macs(self):
        return dims.add(*(r.macs for r in self.rows))

    def to_json(self) -> dict:
        """The `summary --json` object, keys as in DESIGN.md."""
        return {
            "network": self.network,
            "inputs": {k: _json_dims(v) for k, v in self.inputs.items()},
            "outputs": {k: _json_dims(v) for k, v in self.outputs.items()},
            "layers": [{"name": r.name, "op": r.op, "output_shape": _json_dims(r.output_shape),
                        "params": r.params, "macs": _json_dim(r.macs), "receptive_field": r.receptive_field,
                        "effective_stride": r.effective_stride, "location": r.where} for r in self.rows],
            "total_params": self.total_params,
            "total_macs": _json_dim(self.total_macs),
            "warnings": [w.to_json() for w in self.warnings],
        }


def _json_dim(d):
    """An int, or a symbolic size as its text ("N", "ceil(H/2)")."""
    return d if is_static(d) else str(d)


def _json_dims(shape) -> list:
    return [_json_dim(d) for d in shape]


def receptive_fields(graph: LayerGraph) -> dict[str, Field | None]:
    """Receptive field of every layer's output, relative to the network's input pixels.

    r_out = r_in + (k_eff - 1) * j_in and j_out = j_in * s along each spatial dim; a merge
    takes the largest field of its inputs and the jump of those not broadcast along the
    dim; a global layer covers its whole input.
    """
    fields: dict[str, Field | None] = {}
    for layer in graph.layers():
        if layer.op == "input":
            rank = len(layer.shape) - 2
            fields[layer.name] = Field((1.0,) * rank, (1.0,) * rank) if rank > 0 else None
            continue
        sources = [(fields[t.name], t.shape) for t in graph.inputs_of(layer.name)]
        sources = [(f, shape) for f, shape in sources if f is not None]
        if not sources:
            fields[layer.name] = None
            continue
        base = _merged_field(sources, layer.shape)
        in_shape = graph.inputs_of(layer.name)[0].shape
        window = get_op(layer.op).window(layer.attrs, [t.shape for t in graph.inputs_of(layer.name)])
        if window is None:
            fields[layer.name] = base  # a point-wise layer (or linear after flatten) keeps its input's field
            continue
        size, jump = list(base.size), list(base.jump)
        for i in range(len(size)):
            is_global = window.global_[i] if window.global_ else False
            if is_global:
                extent = in_shape[2 + i]
                if isinstance(extent, int):
                    size[i] = size[i] + (extent - 1) * jump[i]
                jump[i] = jump[i] * (extent if isinstance(extent, int) else 1)
            else:
                size[i] = size[i] + (window.kernel[i] - 1) * jump[i]
                jump[i] = jump[i] * window.stride[i]
        fields[layer.name] = Field(tuple(size), tuple(jump))
    return fields


def _merged_field(sources: list[tuple[Field, tuple]], out_shape: tuple) -> Field:
    """The field of a layer's output before its own window: the largest field of its inputs.

    The step between neighbouring outputs comes only from inputs that vary along that
    axis: one broadcast along it (size 1, as an SE block's channel scales) is read whole
    by every output, so its field counts but its jump does not."""
    size, jump = [], []
    for i in range(len(sources[0][0].size)):
        size.append(max(f.size[i] for f, _ in sources))
        varying = [f.jump[i] for f, shape in sources if not _broadcast_along(shape, out_shape, 2 + i)]
        jump.append(max(varying or [f.jump[i] for f, _ in sources]))
    return Field(tuple(size), tuple(jump))


def _broadcast_along(shape: tuple, out_shape: tuple, axis: int) -> bool:
    return (len(shape) == len(out_shape) and axis < len(shape) and shape[axis] == 1
            and out_shape[axis] != 1)


def _num(v: float):
    return int(v) if float(v).is_integer() else round(v, 3)


def summarize(graph: LayerGraph, with_lint: bool = True) -> Summary:
    """The per-layer table of a graph, its totals and (optionally) its lint warnings."""
    fields = receptive_fields(graph)
    rows = []
    for layer in graph.layers():
        if layer.op == "input":
            continue
        f = fields.get(layer.name)
        rows.append(LayerRow(layer.name, layer.op, layer.shape, layer_params(layer), layer_macs(graph, layer),
                             [_num(v) for v in f.size] if f else [], [_num(v) for v in f.jump] if f else [],
                             layer.where))
    inputs = {n: graph.layer(n).shape for n in graph.inputs}
    outputs = {name: graph.layer(node).shape for name, node in zip(graph.output_names, graph.outputs)}
    warnings = []
    if with_lint:
        from cnncomp.analysis.advice import lint

        warnings = lint(graph)
    return Summary(graph.name, inputs, outputs, rows, warnings)


def _human(n) -> str:
    if not is_static(n):
        return str(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def format_table(summary: Summary) -> str:
    """The summary as an aligned text table, totals and warnings below it."""
    header = ("layer", "op", "output shape", "params", "MACs", "receptive field", "stride")
    body = [(r.name, r.op, fmt_shape(r.output_shape), f"{r.params:,}", _human(r.macs),
             "x".join(str(v) for v in r.receptive_field) or "-",
             "x".join(str(v) for v in r.effective_stride) or "-") for r in summary.rows]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    right = {3, 4}

    def line(row):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    out = [f"network {summary.network}",
           "inputs: " + ", ".join(f"{k} {fmt_shape(v)}" for k, v in summary.inputs.items()),
           "outputs: " + ", ".join(f"{k} {fmt_shape(v)}" for k, v in summary.outputs.items()), "",
           line(header), line(tuple("-" * w for w in widths))]
    out += [line(row) for row in body]
    total = summary.total_macs
    out += ["", f"total params: {summary.total_params:,}",
            f"total MACs:   {total:,} ({_human(total)}, batch 1)" if is_static(total)
            else f"total MACs:   {total} (batch 1; a number at --shape)"]
    for w in summary.warnings:
        out.append(w.format())
    return "\n".join(out)
