"""Compile-time values of the language: numbers, bools, strings, tuples and tensors."""

from __future__ import annotations

from dataclasses import dataclass

from cnncomp.errors import CnnError
from cnncomp.ops import dims
from cnncomp.ops.dims import SymDim
from cnncomp.ops.registry import Param, describe, fmt_shape, fmt_value


@dataclass(frozen=True)
class Tensor:
    """A tensor flowing through the network: the layer that produces it, its shape and dtype."""

    node: str
    shape: tuple
    dtype: str = "float32"

    def __str__(self) -> str:
        return f"tensor {fmt_shape(self.shape)}"


def type_name(value) -> str:
    return "a tensor" if isinstance(value, Tensor) else describe(value)


def show(value) -> str:
    return str(value) if isinstance(value, Tensor) else fmt_value(value)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# What a value built by arithmetic may hold (docs/language.md, Limits): without bounds a few
# lines of repeated `*` or string `+` ask for gigabytes.
MAX_INT = 2**63 - 1  # magnitude of an int (int64, what ONNX stores)
MAX_STRING = 10_000  # characters of a string
MAX_TUPLE = 10_000  # items of a tuple


def arith(op: str, a, b):
    """Arithmetic and comparisons on values (not tensors), refusing results over the value limits."""
    return _check_size(_arith(op, a, b))  # operands are within the limits, so computing it is cheap


def _check_size(value):
    if is_int(value) and abs(value) > MAX_INT:
        raise CnnError(f"the result is over the limit of {MAX_INT:,} for an int")
    if isinstance(value, str) and len(value) > MAX_STRING:
        raise CnnError(f"the result is a string of {len(value):,} characters, over the limit of {MAX_STRING:,}")
    if isinstance(value, tuple) and len(value) > MAX_TUPLE:
        raise CnnError(f"the result is a tuple of {len(value):,} items, over the limit of {MAX_TUPLE:,}")
    return value


def _arith(op: str, a, b):
    if op in ("==", "!="):
        equal = a == b and type(a) is type(b) or (is_number(a) and is_number(b) and a == b)
        return equal if op == "==" else not equal
    if op in ("and", "or"):
        for v in (a, b):
            if not isinstance(v, bool):
                raise CnnError(f"'{op}' needs bools, got {type_name(v)} ({show(v)})")
        return (a and b) if op == "and" else (a or b)
    if op in ("<", "<=", ">", ">="):
        if not (is_number(a) and is_number(b)):
            raise CnnError(f"'{op}' compares numbers, got {type_name(a)} and {type_name(b)}")
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    if isinstance(a, SymDim) or isinstance(b, SymDim):
        return size_arith(op, a, b)
    if op == "+" and isinstance(a, tuple) and isinstance(b, tuple):
        return a + b
    if op == "+" and isinstance(a, str) and isinstance(b, str):
        return a + b
    if not (is_number(a) and is_number(b)):
        raise CnnError(f"'{op}' needs numbers, got {type_name(a)} and {type_name(b)}")
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op in ("//", "%", "/") and b == 0:
        raise CnnError(f"division by zero in '{op}'")
    if op == "//":
        if not (is_int(a) and is_int(b)):
            raise CnnError(f"'//' is integer division: needs ints, got {type_name(a)} and {type_name(b)}")
        return a // b
    if op == "%":
        return a % b
    if op == "/":
        if is_int(a) and is_int(b):
            if a % b:
                raise CnnError(f"{a} / {b} does not divide exactly: use // for integer division")
            return a // b
        return a / b
    raise CnnError(f"unknown operator '{op}'")


def size_arith(op: str, a, b):
    """Arithmetic on symbolic sizes (an input's `H`) and ints: + - * and exact / give sizes, // and %
    floor sizes, == and != ask whether the sizes are provably equal."""
    for v in (a, b):
        if not (is_int(v) or isinstance(v, SymDim)):
            raise CnnError(f"'{op}' on a symbolic size needs an int or a size, got {type_name(v)} ({show(v)})")
    if op in ("==", "!="):
        return dims.same_size(a, b) == (op == "==")
    if op == "+":
        return dims.add(a, b)
    if op == "-":
        return dims.add(a, dims.mul(b, -1))
    if op == "*":
        return dims.mul(a, b)
    if op in ("//", "/", "%"):
        if not is_int(b) or b <= 0:
            raise CnnError(f"'{op}' divides a symbolic size by a positive int, got {show(b)}")
        if op == "%":
            return dims.remainder(a, b)
        if op == "/" and dims.remainder(a, b) != 0:
            raise CnnError(f"{show(a)} / {b} does not divide exactly{dims.mismatch_hint(dims.mul(dims.floor_div(a, b), b), a)}: "
                           "use // for integer division")
        return dims.floor_div(a, b)
    raise CnnError(f"'{op}' cannot compare symbolic sizes ({show(a)}, {show(b)}): only == and != can")


def check_arg(op_name: str, param: Param, value):
    """Check one argument of a layer against its parameter's kind; return it normalized."""
    kind = param.kind

    def bad(expected: str):
        return CnnError(f"{op_name}: argument '{param.name}' must be {expected}, got {type_name(value)} ({show(value)})")

    if kind == "tensor":
        if not isinstance(value, Tensor):
            raise bad("a tensor")
        return value
    if isinstance(value, Tensor):
        raise bad({"int": "an int", "number": "a number", "bool": "a bool", "str": "a string"}.get(kind, "a value"))
    if kind == "int":
        if not is_int(value):
            raise bad("an int")
    elif kind == "number":
        if not is_number(value):
            raise bad("a number")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
    elif kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        if param.choices and value not in param.choices:
            raise bad(" or ".join(f'"{c}"' for c in param.choices))
    elif kind == "spatial":  # a symbolic size (from spatial(t)) too: the op says where it takes one
        if not (is_int(value) or (isinstance(value, tuple) and value and all(is_int(v) or isinstance(v, SymDim)
                                                                              for v in value))):
            raise bad("an int or a tuple of ints")
    elif kind == "ints":
        if not (is_int(value) or (isinstance(value, tuple) and value and all(is_int(v) for v in value))):
            raise bad("an int or a tuple of ints")
    elif kind == "padding":
        if value != "same" and not (is_int(value) or (isinstance(value, tuple) and value and all(is_int(v) for v in value))):
            raise bad("an int, a tuple of ints or same")
    elif kind == "scale":
        if not (is_number(value) or (isinstance(value, tuple) and value and all(is_number(v) for v in value))):
            raise bad("a number or a tuple of numbers")
    return value
