"""An ONNX model to a LayerGraph and its weights, through the patterns of `patterns.py`.

Anchors are visited last to first so that a pattern absorbs the nodes before
it (and nodes whose outputs nothing reads are left out); the layers are then added first to last (ONNX graphs are topologically
sorted), each normalized and shaped by its op in the registry exactly as the
elaborator would. Every node that no pattern takes is collected, so that one
error lists every unsupported op type with its count and first node name.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from cnncomp.errors import CnnError
from cnncomp.frontend.onnx.model import OnnxModel
from cnncomp.frontend.onnx.naming import Namer
from cnncomp.frontend.onnx.patterns import MATCHERS, NEAREST, Match, Unsupported
from cnncomp.frontend.onnx.patterns.shape_reads import DimOf
from cnncomp.ir.identifiers import ascii_identifier
from cnncomp.ir.graph import Layer, LayerGraph, unique_name
from cnncomp.ops import dims
from cnncomp.ops.registry import compact, fmt_shape, get_op

_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
           onnx.TensorProto.DOUBLE: "float64"}


def identifier(text: str, taken: set[str], fallback: str) -> str:
    """A valid, unused identifier made from `text` (ASCII: the lexer reads no other letters)."""
    name = unique_name(ascii_identifier(text, fallback), taken)
    taken.add(name)
    return name


def find_layers(m: OnnxModel) -> list[Match]:
    """Every layer of the model, first to last; a CnnError listing every node no pattern takes."""
    absorbed: set[int] = set()
    matches: list[tuple[int, Match]] = []
    unsupported: dict[str, list] = {}  # op type -> [count, first node name, reason]
    position = {id(n): i for i, n in enumerate(m.nodes)}
    live = set(m.outputs)  # tensors something reads: a node computing none of them is dead code
    for node in reversed(m.nodes):
        if id(node) in m.folded or id(node) in absorbed or not live.intersection(node.output):
            continue
        live.update(node.input)
        reason = "no layer of the language computes it"
        found = None
        for match in MATCHERS.get(node.op_type, []):
            try:
                found = match(m, node)
            except Unsupported as why:
                reason = str(why)
            if found is not None:
                break
        if found is None:
            entry = unsupported.setdefault(node.op_type, [0, node.name or node.output[0], reason])
            entry[0] += 1
            entry[1], entry[2] = node.name or node.output[0], reason  # walking backwards: keep the first
            continue
        for part in found if isinstance(found, list) else [found]:  # a Split is a layer per part
            absorbed.update(id(n) for n in part.nodes)
            live.update(name for n in part.nodes for name in n.input)
            matches.append((position[id(node)], part))
    if unsupported:
        lines = [f"  {op}: {count} node{'s' if count > 1 else ''}, first '{first}': {reason}"
                 + (f"; nearest in the language: {NEAREST[op]}" if op in NEAREST else "")
                 for op, (count, first, reason) in sorted(unsupported.items())]
        total = sum(c for c, _, _ in unsupported.values())
        raise CnnError(f"{m.source}: {total} node{'s' if total > 1 else ''} of {len(unsupported)} op "
                       f"type{'s' if len(unsupported) > 1 else ''} {'have' if total > 1 else 'has'} no layer "
                       "in the language:\n"
                       + "\n".join(lines))
    return [match for _, match in sorted(matches, key=lambda item: item[0])]


class _NeedsConstraint(Exception):
    """A merge whose symbolic input sizes are equal only under `where symbol % modulus == 0`."""

    def __init__(self, symbol: str, modulus: int, error: CnnError):
        super().__init__(symbol, modulus)
        self.symbol, self.modulus, self.error = symbol, modulus, error


def build_graph(m: OnnxModel, name: str, pins: dict | None = None) -> tuple[LayerGraph, dict[str, np.ndarray]]:
    """The model as a LayerGraph (every shape inferred by the registry) and its weights keyed by layer name.

    The model's dynamic dims stay symbols named after their `dim_param`s; where a merge meets sizes that are
    equal only when a symbol is a multiple of some m (a stride-8 map upsampled by 2 added to a stride-4 one),
    the symbol takes the constraint `where symbol % m == 0` (graph.meta["symbols"], which the .cnn writer
    states) and the graph is built again. `pins` ({input name or None: shape}) fixes inputs' shapes instead."""
    _check_pins(m, pins or {})
    matches = find_layers(m)
    constraints: dict[str, int] = {}
    last = None
    for _ in range(_MAX_CONSTRAINT_ROUNDS):
        try:
            return _build(m, name, matches, constraints, pins or {})
        except _NeedsConstraint as need:
            if constraints.get(need.symbol, 1) % need.modulus == 0:
                raise need.error from None  # already constrained so: the sizes differ for another reason
            constraints[need.symbol] = math.lcm(constraints.get(need.symbol, 1), need.modulus)
            last = need.error
    raise last


_MAX_CONSTRAINT_ROUNDS = 16  # each round constrains a symbol further; a real network needs one or two per symbol


def _build(m: OnnxModel, name: str, matches: list[Match], constraints: dict[str, int],
           pins: dict) -> tuple[LayerGraph, dict[str, np.ndarray]]:
    graph = LayerGraph(identifier(name, set(), "network"))
    taken: set[str] = set()
    tensor_layer: dict[str, str] = {}  # ONNX tensor -> the layer that computes it
    for info in m.inputs:
        input_name = identifier(info.name, taken, "input")
        shape = _input_shape(m, info, constraints, _pin_for(pins, info.name, len(m.inputs), m.source))
        graph.add_layer(Layer(input_name, "input", {}, shape, _dtype(info, m.source)))
        tensor_layer[info.name] = input_name
    namer = Namer([match.anchor.name for match in matches], taken)
    weights: dict[str, np.ndarray] = {}
    for match in matches:
        if _is_output_rename(m, match, tensor_layer):
            tensor_layer[match.output] = tensor_layer[match.inputs[0]]
            continue
        layer_name = namer.name_for(match.anchor.name, match.anchor.op_type)
        _add_layer(graph, match, layer_name, tensor_layer, m)
        for suffix, value in match.weights.items():
            weights[f"{layer_name}.{suffix}"] = np.ascontiguousarray(value, dtype=np.float32)
        tensor_layer[match.output] = layer_name
    if constraints:
        graph.meta["symbols"] = {s: {"multiple_of": k, "remainder": 0, "min": 1} for s, k in constraints.items()}
    output_taken = set(graph.inputs)
    for out in m.outputs:
        if out not in tensor_layer:
            raise CnnError(f"{m.source}: the graph output '{out}' is a constant; the language has no constant outputs")
        graph.outputs.append(tensor_layer[out])
        graph.output_names.append(identifier(out, output_taken, "output"))
    return graph, weights


def _is_output_rename(m: OnnxModel, match: Match, tensor_layer: dict) -> bool:
    """An Identity that only gives a layer's output the graph output's name: no layer of its own."""
    anchor = match.anchor
    source = match.inputs[0] if match.inputs else None
    return (anchor.op_type == "Identity" and match.output in m.outputs and source in tensor_layer
            and source not in m.outputs and source not in {i.name for i in m.inputs})


def _add_layer(graph: LayerGraph, match: Match, name: str, tensor_layer: dict, m: OnnxModel) -> None:
    op = get_op(match.op)
    where = f"node '{match.anchor.name or match.output}' ({match.anchor.op_type})"
    missing = [t for t in match.inputs if t not in tensor_layer]
    if missing:
        raise CnnError(f"{m.source}: {where} reads '{missing[0]}', which no layer computes")
    sources = [tensor_layer[t] for t in match.inputs]
    shapes = [graph.layer(s).shape for s in sources]
    given = {k: _dims_resolved(v, graph, tensor_layer, where, m.source) for k, v in match.args.items()}
    args = _spelled_for(op, given, where, m.source)
    for p in op.params:  # the language defaults for what the pattern left out
        if p.name not in args and p.kind != "tensor":
            args[p.name] = p.default
    try:
        attrs = op.normalize(args, shapes)
        shape = op.infer_shape(attrs, shapes)
        specs = op.weight_specs(attrs, shapes)
    except CnnError as err:
        located = CnnError(f"{m.source}: {where} as {match.op}: {err.message}")
        need = _constraint_for_merge(shapes)
        if need is not None:
            raise _NeedsConstraint(*need, located) from None
        raise located from None
    for suffix, spec in specs.items():
        value = match.weights.get(suffix)
        if value is None or tuple(value.shape) != tuple(spec.shape):
            got = "none" if value is None else fmt_shape(value.shape)
            raise CnnError(f"{m.source}: {where} as {match.op}: weight '{suffix}' has shape {got}, "
                           f"the layer needs {fmt_shape(spec.shape)}")
    expected = m.shapes.get(match.output)
    if expected is not None and len(expected) == len(shape) and any(
            isinstance(e, int) and isinstance(s, int) and e != s for e, s in zip(expected, shape)):
        raise CnnError(f"{m.source}: {where} as {match.op}: the layer gives shape {fmt_shape(shape)}, "
                       f"the model {fmt_shape(expected)}")
    dtype = graph.layer(sources[0]).dtype if sources else "float32"
    layer = Layer(name, match.op, attrs, shape, dtype, weights=specs, args=dict(given))
    graph.add_layer(layer, sources)


def _dims_resolved(value, graph: LayerGraph, tensor_layer: dict, where: str, source: str):
    """An argument with every DimOf (a size read from a tensor's shape at run time) replaced by that dim of
    the tensor's layer: an int, or the symbolic size the registry worked out (exact for every input size)."""
    if isinstance(value, tuple) and any(isinstance(v, DimOf) for v in value):
        return compact(tuple(_dims_resolved(v, graph, tensor_layer, where, source) for v in value))
    if not isinstance(value, DimOf):
        return value
    if value.tensor not in tensor_layer:
        raise CnnError(f"{source}: {where} reads the shape of '{value.tensor}', which no layer computes")
    dim = graph.layer(tensor_layer[value.tensor]).shape[value.axis]
    return dims.as_dim(dims.expr_of(dim)) if isinstance(dim, str) else dim  # an input's symbol: a plain str


def _constraint_for_merge(shapes: list[tuple]) -> tuple[str, int] | None:
    """(symbol, m): a divisibility under which the merged inputs' differing symbolic sizes would be equal."""
    for shape in shapes[1:]:
        if len(shape) != len(shapes[0]):
            return None
        for a, b in zip(shapes[0], shape):
            if not dims.is_static(a) or not dims.is_static(b):
                if not dims.same_size(a, b):
                    need = dims.divisibility_for_equal(a, b)
                    if need is not None:
                        return need
    return None


# Argument names the contract and PyTorch spell differently; a layer registered with the other spelling
# still takes the pattern's value.
_ALIASES = {"g": "groups", "groups": "g", "ceil": "ceil_mode", "count_pad": "count_include_pad"}


def _spelled_for(op, args: dict, where: str, source: str) -> dict:
    names = {p.name for p in op.params}
    out = {}
    for key, value in args.items():
        if key not in names and _ALIASES.get(key) in names:
            key = _ALIASES[key]
        if key not in names:
            raise CnnError(f"{source}: {where} needs {op.name}({key}=...), which this cnncomp's {op.name} "
                           "does not take")
        out[key] = value
    return out


def _pin_for(pins: dict, input_name: str, inputs: int, source: str) -> tuple | None:
    """The pinned shape of an input (--input-shape x=1x3x320x480; the name may be left out with one input)."""
    if input_name in pins:
        return tuple(pins[input_name])
    if None in pins:
        if inputs > 1:
            raise CnnError(f"{source}: the model has {inputs} inputs; name the one --input-shape pins (NAME=1x3xHxW)")
        return tuple(pins[None])
    return None


def _check_pins(m: OnnxModel, pins: dict) -> None:
    """Every pinned input exists: an error naming the model's inputs otherwise."""
    names = [i.name for i in m.inputs]
    for name in pins:
        if name is not None and name not in names:
            raise CnnError(f"{m.source}: --input-shape names '{name}', which is no input of the model; its inputs: "
                           + ", ".join(names))


def _input_shape(m: OnnxModel, info: onnx.ValueInfoProto, constraints: dict[str, int], pin: tuple | None) -> tuple:
    shape: list = []
    for i, d in enumerate(info.type.tensor_type.shape.dim):
        if d.HasField("dim_value"):
            shape.append(d.dim_value)
        else:
            name = identifier(d.dim_param, set(), "N") if d.dim_param else ("N" if i == 0 else f"D{i}")
            shape.append(dims.symbolic(name, constraints[name]) if constraints.get(name, 1) > 1 else name)
    if not shape:
        raise CnnError(f"{m.source}: input '{info.name}' has no declared shape")
    if pin is None:
        return tuple(shape)
    if len(pin) != len(shape) or any(isinstance(d, int) and d != p for d, p in zip(shape, pin)):
        raise CnnError(f"{m.source}: --input-shape {info.name}={'x'.join(map(str, pin))} does not fit the "
                       f"input's declared shape {fmt_shape(tuple(shape))}")
    return tuple(pin)


def _dtype(info: onnx.ValueInfoProto, source: str) -> str:
    elem = info.type.tensor_type.elem_type
    if elem not in _DTYPES:
        raise CnnError(f"{source}: input '{info.name}' has element type "
                       f"{onnx.TensorProto.DataType.Name(elem)}; the language's inputs are float16/32/64")
    return _DTYPES[elem]
