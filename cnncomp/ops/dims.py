"""Symbolic sizes: a dim is an int, or an expression of the spec's symbols (`N`, `H`, `W`).

A dynamic dim is a `SymDim`: a `str` whose text is the readable expression (`ceil(H/2)`, what
messages, `summary`, JSON and ONNX `dim_param`s show) and which computes as a sympy expression
(`.expr`). Static dims stay Python ints and never touch sympy, so static specs behave exactly as
before; sympy is imported only when a symbolic size meets arithmetic.

Constraints are baked into the symbols: `where H % 16 == 0` makes H the expression `16*k` of a
fresh integer symbol k, so `2*floor(H/2)` simplifies to `H` with no separate proof step, and two
sizes are equal exactly when their difference expands to 0.

Canonical forms. The shape rules build sizes only through `floor_div` (and `ceil_div`), which
keeps every floor as `floor((a*X + b)/m)` with 0 <= b < m and pulls out whatever divides: for
integer-valued X and positive ints m, k the rule floor((floor(X/m) + n)/k) = floor((X + n*m)/(m*k))
collapses a stack of strided layers into one floor (two stride-2 convs give `ceil(H/4)`).
"""

from __future__ import annotations

import math
from functools import lru_cache

from cnncomp.errors import CnnError

_CONSTRAINED = "#"  # in an internal symbol's name: "H#16#0" stands for (H - 0) / 16


def _sp():
    import sympy

    return sympy


class SymDim(str):
    """A dynamic dim: reads as its expression's text, computes as the expression."""

    def __new__(cls, text: str, expr=None):
        obj = str.__new__(cls, text)
        obj._expr = expr
        return obj

    def __getnewargs__(self):
        return (str(self), self._expr)

    @property
    def expr(self):
        if self._expr is None:
            self._expr = symbol(str(self))
        return self._expr

    # Arithmetic is on the expression (a plain str would concatenate or repeat).
    def __add__(self, other):
        return as_dim(expr_of(self) + expr_of(other))

    def __radd__(self, other):
        return as_dim(expr_of(other) + expr_of(self))

    def __sub__(self, other):
        return as_dim(expr_of(self) - expr_of(other))

    def __rsub__(self, other):
        return as_dim(expr_of(other) - expr_of(self))

    def __mul__(self, other):
        return as_dim(expr_of(self) * expr_of(other))

    def __rmul__(self, other):
        return as_dim(expr_of(other) * expr_of(self))

    def __neg__(self):
        return as_dim(-expr_of(self))

    def __floordiv__(self, other):
        if not isinstance(other, int):
            return NotImplemented
        return floor_div(self, other)

    def __mod__(self, other):
        if not isinstance(other, int):
            return NotImplemented
        return remainder(self, other)


def is_static(d) -> bool:
    return isinstance(d, int) and not isinstance(d, bool)


def is_symbolic_shape(shape) -> bool:
    return any(not is_static(d) for d in shape)


@lru_cache(maxsize=None)
def symbol(name: str, modulus: int = 1, rest: int = 0):
    """The expression a spec symbol stands for: the symbol itself, or `modulus*k + rest` under
    `where NAME % modulus == rest` (k a fresh non-negative integer symbol)."""
    sp = _sp()
    if modulus == 1:
        return sp.Symbol(name, integer=True, positive=True)
    bound = {"positive": True} if rest == 0 else {"nonnegative": True}
    k = sp.Symbol(f"{name}{_CONSTRAINED}{modulus}{_CONSTRAINED}{rest}", integer=True, **bound)
    return modulus * k + rest


def constraint_of(sym) -> tuple[str, int, int]:
    """(spec name, modulus, rest) of a sympy symbol of a size: the symbol stands for
    `modulus*sym + rest` of the spec symbol."""
    if _CONSTRAINED in sym.name:
        name, modulus, rest = sym.name.split(_CONSTRAINED)
        return name, int(modulus), int(rest)
    return sym.name, 1, 0


def expr_of(d):
    """A dim (int, symbol name or SymDim) as a sympy expression."""
    if isinstance(d, SymDim):
        return d.expr
    if isinstance(d, str):
        return symbol(d)
    if isinstance(d, bool):
        raise TypeError("a bool is not a size")
    if isinstance(d, int):
        return _sp().Integer(d)
    return d


def as_dim(expr):
    """An expression back to a dim: an int when it is a number, else a SymDim with readable text."""
    sp = _sp()
    expr = sp.expand(expr)
    if expr.is_Integer:
        return int(expr)
    if expr.is_Number:
        raise CnnError(f"size {expr} is not an integer")
    return SymDim(show(expr), expr)


def symbolic(name: str, modulus: int = 1, rest: int = 0) -> SymDim:
    """The input dim of a spec symbol, with its constraint (sympy only imported once needed)."""
    return SymDim(name, symbol(name, modulus, rest) if modulus > 1 else None)


# ---- building sizes (the shape rules' arithmetic) ------------------------------------------

def floor_div(d, s: int):
    """floor(d / s) for a positive int s, kept in canonical form (see the module docstring)."""
    if is_static(d):
        return d // s
    return as_dim(_floor_div(expr_of(d), s))


def ceil_div(d, s: int):
    """ceil(d / s) = floor((d + s - 1) / s)."""
    if is_static(d):
        return -(-d // s)
    return as_dim(_floor_div(expr_of(d) + s - 1, s))


def remainder(d, s: int):
    """d mod s: an int when the constraints decide it, else a SymDim."""
    if is_static(d):
        return d % s
    e = expr_of(d)
    return as_dim(e - s * _floor_div(e, s))


def add(*dims):
    if all(is_static(d) for d in dims):
        return sum(dims)
    return as_dim(sum((expr_of(d) for d in dims), _sp().Integer(0)))


def mul(*dims):
    if all(is_static(d) for d in dims):
        return math.prod(dims)
    return as_dim(math.prod(expr_of(d) for d in dims))


def scale_floor(d, scale: float, what: str):
    """floor(d * scale) as PyTorch's interpolate computes it in double; a symbolic d needs a scale
    that is a small fraction p/q with float(scale) >= p/q, so floor(d*p/q) is exact."""
    if is_static(d):
        return math.floor(d * scale)
    from fractions import Fraction

    ratio = Fraction(scale).limit_denominator(1000)
    if Fraction(scale) < ratio:
        raise CnnError(f"{what}: scale {scale} is not an exact fraction: the size '{d}' must be static")
    return floor_div(mul(d, ratio.numerator), ratio.denominator)


def _floor_div(e, s: int):
    sp = _sp()
    e = sp.expand(e)
    if s == 1:
        return e
    const, terms = e.as_coeff_add()
    if not const.is_Integer:
        return sp.floor(e / s)
    out, r = divmod(int(const), s)
    rest = []
    for t in terms:
        c, atom = t.as_coeff_Mul()
        if not c.is_Integer:
            return sp.floor(e / s)
        whole, part = divmod(int(c), s)
        out = out + whole * atom
        if part:
            rest.append((part, atom))
    if not rest:
        return out
    g = math.gcd(s, *(c for c, _ in rest))
    if g > 1:  # floor((g*u + r) / (g*m)) = floor((u + floor(r/g)) / m) for integer u
        s, r, rest = s // g, r // g, [(c // g, a) for c, a in rest]
    if len(rest) == 1 and rest[0][0] == 1 and isinstance(rest[0][1], sp.floor):
        num, den = sp.fraction(sp.together(rest[0][1].args[0]))
        if den.is_Integer and den > 0:
            # floor((floor(X/m) + n) / k) = floor((X + n*m) / (m*k))
            return out + _floor_div(sp.expand(num) + r * den, int(den) * s)
    return out + sp.floor((sum(c * a for c, a in rest) + r) / sp.Integer(s))


# ---- equality ---------------------------------------------------------------

def same_size(a, b) -> bool:
    """Whether two dims are provably equal (under the constraints baked into their symbols)."""
    if is_static(a) and is_static(b):
        return a == b
    if str(a) == str(b) and not (is_static(a) or is_static(b)):
        return True
    return _sp().expand(expr_of(a) - expr_of(b)) == 0


def _equal_residues(a, b):
    """(spec name, modulus, rest, period, residues): a - b depends on one symbol k (the spec symbol is
    `modulus*k + rest`) and is 0 exactly for k % period in residues; None when that is not worked out."""
    sp = _sp()
    diff = sp.expand(expr_of(a) - expr_of(b))
    free = sorted(diff.free_symbols, key=lambda s: s.name)
    if len(free) != 1:
        return None
    k = free[0]
    name, modulus, rest = constraint_of(k)
    period = 1
    for f in diff.atoms(sp.floor):
        _, den = sp.fraction(sp.together(f.args[0]))
        if not den.is_Integer:
            return None
        period = math.lcm(period, int(den))
    if period > 4096:
        return None
    t = sp.Symbol("t", integer=True, nonnegative=True)
    zero = [r for r in range(period) if sp.expand(diff.subs(k, period * t + r)) == 0]
    return name, modulus, rest, period, zero


def equal_when(a, b) -> str:
    """The condition under which two sizes that are not provably equal would be, as words for an
    error message ("equal only when H is divisible by 16"), or '' when none is found."""
    found = _equal_residues(a, b)
    if found is None:
        return ""
    name, modulus, rest, period, zero = found
    if not zero:
        return "they differ for every size"
    # k = period*t + r, the symbol itself is modulus*k + rest
    step = next((g for g in range(1, period + 1) if period % g == 0 and zero == list(range(0, period, g))), None)
    if step is not None:
        m = modulus * step
        return (f"equal only when {name} is divisible by {m}" if rest == 0
                else f"equal only when {name} % {m} == {rest}")
    values = ", ".join(str(modulus * r + rest) for r in zero)
    return f"equal only when {name} % {modulus * period} is one of {values}"


def divisibility_for_equal(a, b) -> tuple[str, int] | None:
    """(symbol, m): the smallest `where symbol % m == 0` under which the two sizes are equal (a stride-8
    map upsampled by 2 meets a stride-4 map when H % 8 == 0), or None when no such constraint exists."""
    if is_static(a) and is_static(b):
        return None
    found = _equal_residues(a, b)
    if found is None:
        return None
    name, modulus, rest, period, zero = found
    if rest != 0 or 0 not in zero:
        return None
    step = next(g for g in range(1, period + 1) if period % g == 0 and set(range(0, period, g)) <= set(zero))
    return name, modulus * step


def mismatch_hint(a, b) -> str:
    """'; equal only when ...' for an error message about two differing sizes, or ''."""
    if is_static(a) and is_static(b):
        return ""
    why = equal_when(a, b)
    if why.startswith("equal only when") and " is divisible by " in why:
        name, m = why.split("equal only when ")[1].split(" is divisible by ")
        return f" ({why}: state it as `where {name} % {m} == 0` on the input)"
    return f" ({why})" if why else ""


# ---- evaluating at a size ---------------------------------------------------

def evaluate(d, sizes: dict[str, int]) -> int:
    """A dim at given values of the symbols (`{"N": 1, "H": 512}`)."""
    if is_static(d):
        return d
    if _plain(d):  # a bare symbol: no sympy needed
        if str(d) not in sizes:
            raise CnnError(f"no size given for the symbol '{d}'")
        return sizes[str(d)]
    e = expr_of(d)
    subs = {}
    for s in e.free_symbols:
        name, modulus, rest = constraint_of(s)
        if name not in sizes:
            raise CnnError(f"no size given for the symbol '{name}'")
        value = sizes[name]
        if (value - rest) % modulus:
            raise CnnError(f"{name}={value} breaks the constraint {name} % {modulus} == {rest}")
        subs[s] = (value - rest) // modulus
    value = e.subs(subs)
    if not value.is_Integer:
        raise CnnError(f"size '{d}' is not an integer at {sizes}")
    return int(value)


def shape_at(shape: tuple, sizes: dict[str, int]) -> tuple:
    return tuple(evaluate(d, sizes) for d in shape)


def ratio(a, b) -> float:
    """a / b for large sizes (every symbol's step at 10**6): how many positions of b one of a makes,
    for receptive fields through an `upsample(size=...)` between symbolic sizes."""
    if is_static(a) and is_static(b):
        return a / b
    ea, eb = expr_of(a), expr_of(b)
    big = {s: 10**6 for s in ea.free_symbols | eb.free_symbols}
    return round(float(ea.xreplace(big) / eb.xreplace(big)), 6)


def symbols_of(d) -> set[str]:
    """The spec symbols a dim depends on."""
    if is_static(d):
        return set()
    if _plain(d):
        return {str(d)}
    return {constraint_of(s)[0] for s in expr_of(d).free_symbols}


def _plain(d) -> bool:
    """A bare, unconstrained symbol (an input's `N`), read without sympy."""
    return isinstance(d, str) and (not isinstance(d, SymDim) or d._expr is None) and str(d).isidentifier()


# ---- printing ---------------------------------------------------------------

def show(expr) -> str:
    """Readable text of an expression of the symbols: `ceil(H/2)`, `floor((H - 1)/4) + 1`, `H/16`."""
    sp = _sp()
    subs = {}
    for s in expr.free_symbols:
        if _CONSTRAINED in s.name:
            name, modulus, rest = s.name.split(_CONSTRAINED)
            subs[s] = (sp.Symbol(name, integer=True, positive=True) - int(rest)) / int(modulus)
    if subs:
        expr = expr.xreplace(subs)
    return _printer().doprint(expr)


def to_language(d) -> str:
    """A size as a .cnn expression of the symbols (`(H + 7) // 8`), for the spec printer."""
    if is_static(d):
        return str(d)
    sp = _sp()
    expr = expr_of(d)
    subs = {}
    for s in expr.free_symbols:
        if _CONSTRAINED in s.name:
            name, modulus, rest = s.name.split(_CONSTRAINED)
            subs[s] = (sp.Symbol(name, integer=True, positive=True) - int(rest)) / int(modulus)
    return _printer(language=True).doprint(expr.xreplace(subs) if subs else expr)


@lru_cache(maxsize=2)
def _printer(language: bool = False):
    from sympy.printing.str import StrPrinter

    class _DimPrinter(StrPrinter):
        def _print_floor(self, e):
            sp = _sp()
            num, den = sp.fraction(sp.together(e.args[0]))
            num = sp.expand(num)
            if language:
                return f"({self._print(num)}) // {self._print(den)}"
            const, _ = num.as_coeff_add()
            body = num - const
            if den.is_Integer and den > 1 and const.is_Integer and 0 <= const < den:
                over = self._print(body) if body.is_Symbol else f"({self._print(body)})"
                if const == den - 1:
                    return f"ceil({over}/{den})"
                if const == 0:
                    return f"floor({over}/{den})"
            return f"floor({self._print(sp.together(e.args[0]))})"

        def _print_ceiling(self, e):
            if language:
                return f"-((-{self._print(e.args[0])}) // 1)"
            return f"ceil({self._print(e.args[0])})"

    return _DimPrinter()


def bind_symbols(declared: dict[str, tuple], actual: dict[str, tuple], minimums: dict[str, int] | None = None,
                 what: str = "input") -> dict[str, int]:
    """The value of every symbol, read from actual input shapes against the declared ones
    (`{"x": (N, 3, H, W)}` and `{"x": (2, 3, 224, 320)}` give N=2, H=224, W=320); a static dim
    that differs, a symbol seen with two values or a size that breaks a constraint is an error."""
    sizes: dict[str, int] = {}
    for name, want in declared.items():
        if name not in actual:
            continue
        got = tuple(int(g) for g in actual[name])
        if len(got) != len(want):
            raise CnnError(f"{what} '{name}' has shape {list(got)}, the network takes rank {len(want)} "
                           f"([{', '.join(map(str, want))}])")
        for i, (w, g) in enumerate(zip(want, got)):
            if is_static(w):
                if w != g:
                    raise CnnError(f"{what} '{name}' has shape {list(got)}: dim {i} must be {w} "
                                   f"(the network takes [{', '.join(map(str, want))}])")
                continue
            symbol_name, modulus, rest = input_symbol(w)
            if symbol_name in sizes and sizes[symbol_name] != g:
                raise CnnError(f"{what} '{name}' has shape {list(got)}: {symbol_name} is {sizes[symbol_name]} "
                               f"elsewhere and {g} here")
            if g % modulus != rest:
                raise CnnError(f"{what} '{name}' has shape {list(got)}: {symbol_name}={g} breaks the constraint "
                               f"{symbol_name} % {modulus} == {rest}")
            least = (minimums or {}).get(symbol_name, 1)
            if g < least:
                raise CnnError(f"{what} '{name}' has shape {list(got)}: {symbol_name}={g} is below the "
                               f"constraint {symbol_name} >= {least}")
            sizes[symbol_name] = g
    return sizes


def input_symbol(d) -> tuple[str, int, int]:
    """(name, modulus, rest) of an input's symbolic dim."""
    if isinstance(d, SymDim) and d._expr is not None:
        free = list(d.expr.free_symbols)
        if len(free) == 1:
            return constraint_of(free[0])
    return str(d), 1, 0


def concrete(value, sizes: dict[str, int]):
    """A layer attribute with its symbolic sizes evaluated at `sizes` (tuples and dicts walked)."""
    if isinstance(value, SymDim) or (isinstance(value, str) and value in sizes):
        return evaluate(value, sizes)
    if isinstance(value, tuple):
        return tuple(concrete(v, sizes) for v in value)
    if isinstance(value, dict):
        return {k: concrete(v, sizes) for k, v in value.items()}
    return value


def has_symbolic(value) -> bool:
    """Whether an attribute value holds a symbolic size."""
    if isinstance(value, SymDim):
        return True
    if isinstance(value, tuple):
        return any(has_symbolic(v) for v in value)
    if isinstance(value, dict):
        return any(has_symbolic(v) for v in value.values())
    return False
