"""Symbolic sizes computed when the model runs: a spec size such as `ceil(H/8)` as int64 ONNX nodes.

A layer whose attributes hold a symbolic size (`upsample(size=spatial(x))` of a dynamic input) needs
the number at run time. The symbols are read from the graph inputs' shapes (`Shape`, `Slice`), a
constrained symbol `H = m*k + r` gives k = (H - r) / m, and the expression is built from `Add`, `Mul`
and `Div`: every floor in a size's canonical form has a non-negative numerator (cnncomp/ops/dims.py),
so ONNX's truncating integer `Div` is the floor.
"""

from __future__ import annotations

from typing import Sequence

from cnncomp.errors import CnnError
from cnncomp.ops.dims import constraint_of, expr_of, input_symbol, is_static


def symbol_sources(graph) -> dict[str, tuple[str, int]]:
    """Spec symbol -> (graph input, axis) whose size it is."""
    sources: dict[str, tuple[str, int]] = {}
    for name in graph.inputs:
        for axis, d in enumerate(graph.layer(name).shape):
            if not is_static(d):
                sources.setdefault(input_symbol(d)[0], (name, axis))
    return sources


def size_tensor(b, sizes: Sequence, hint: str) -> str:
    """A 1-D int64 tensor holding `sizes` (ints and symbolic sizes) when the model runs."""
    if all(is_static(d) for d in sizes):
        return b.const_int64(list(sizes), hint)
    parts = [b.const_int64([d], f"{hint}/const") if is_static(d) else _lower(b, expr_of(d), hint) for d in sizes]
    return parts[0] if len(parts) == 1 else b.node("Concat", parts, b.fresh(hint), axis=0)


def _lower(b, e, hint: str) -> str:
    import sympy as sp

    if e.is_Integer:
        return b.const_int64([int(e)], f"{hint}/const")
    if e.is_Symbol:
        return _symbol(b, e, hint)
    if isinstance(e, sp.Add) or isinstance(e, sp.Mul):
        op = "Add" if isinstance(e, sp.Add) else "Mul"
        args = [_lower(b, a, hint) for a in e.args]
        out = args[0]
        for a in args[1:]:
            out = b.node(op, [out, a], b.fresh(f"{hint}/{op.lower()}"))
        return out
    if isinstance(e, sp.floor):
        num, den = sp.fraction(sp.together(e.args[0]))
        if den.is_Integer:
            return b.node("Div", [_lower(b, sp.expand(num), hint), b.const_int64([int(den)], f"{hint}/const")],
                          b.fresh(f"{hint}/div"))
    if isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp > 0:
        return _lower(b, sp.Mul(*([e.base] * int(e.exp)), evaluate=False), hint)
    raise CnnError(f"the symbolic size {e} cannot be computed in ONNX")


def _symbol(b, sym, hint: str) -> str:
    name, modulus, rest = constraint_of(sym)
    source = b.symbol_sources.get(name)
    if source is None:
        raise CnnError(f"the symbolic size '{name}' is not the size of a graph input")
    tensor, axis = source
    shape = b.node("Shape", [tensor], b.fresh(f"{hint}/{tensor}_shape"))
    value = b.node("Slice", [shape, b.const_int64([axis], f"{hint}/const"), b.const_int64([axis + 1], f"{hint}/const")],
                   b.fresh(f"{hint}/{name}"))
    if rest:
        value = b.node("Sub", [value, b.const_int64([rest], f"{hint}/const")], b.fresh(f"{hint}/{name}_rest"))
    if modulus > 1:
        value = b.node("Div", [value, b.const_int64([modulus], f"{hint}/const")], b.fresh(f"{hint}/{name}_steps"))
    return value
