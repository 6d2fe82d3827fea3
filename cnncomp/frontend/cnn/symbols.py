"""The symbols of a spec's input dims (`N`, `H`, `W`): their constraints and -D pins.

`input x: [N, 3, H, W] where H % 32 == 0, W % 32 == 0, H >= 64` states what sizes the network
takes. A constraint is `S % M == R` (S is R more than a multiple of M) or a lower bound
`S >= V` (`S > V`); `and` joins several. The modulus is baked into the symbol's expression (see
cnncomp/ops/dims.py), so the elaborator proves merges equal with it; the bounds are kept for
choosing the sizes a dynamic model is verified at. `-D H=512` pins a symbol to a number: the
spec then elaborates exactly as if it had written 512.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnncomp.errors import CnnError, Loc
from cnncomp.frontend.cnn import ast


@dataclass
class SymbolRule:
    """What a spec states about one symbol: size = modulus*k + rest, and size >= minimum."""

    name: str
    modulus: int = 1
    rest: int = 0
    minimum: int = 1

    def allows(self, value: int) -> bool:
        return value >= self.minimum and value % self.modulus == self.rest

    def describe(self) -> str:
        parts = []
        if self.modulus > 1:
            parts.append(f"{self.name} % {self.modulus} == {self.rest}")
        if self.minimum > 1:
            parts.append(f"{self.name} >= {self.minimum}")
        return ", ".join(parts)

    def to_json(self) -> dict:
        return {"multiple_of": self.modulus, "remainder": self.rest, "min": self.minimum}


def input_symbols(program: ast.Program, lets: dict) -> list[str]:
    """The names used as symbolic dims by the spec's inputs, in order of appearance."""
    names: list[str] = []
    for stmt in program.stmts:
        if isinstance(stmt, ast.Input):
            for d in stmt.dims:
                if isinstance(d, ast.Name) and d.id not in lets and d.id not in names:
                    names.append(d.id)
    return names


def read_constraints(program: ast.Program, lets: dict, evaluate) -> dict[str, SymbolRule]:
    """The rules of every input symbol, from the `where` clauses of all inputs.

    `evaluate(expr)` gives the value of a constant expression (a `let` name, a number)."""
    symbols = input_symbols(program, lets)
    rules = {name: SymbolRule(name) for name in symbols}
    for stmt in program.stmts:
        if isinstance(stmt, ast.Input):
            for cond in stmt.where:
                for part in _conjuncts(cond):
                    _apply(part, rules, evaluate)
    return rules


def _conjuncts(e: ast.Expr) -> list[ast.Expr]:
    if isinstance(e, ast.BinOp) and e.op == "and":
        return _conjuncts(e.left) + _conjuncts(e.right)
    return [e]


_FORMS = "`S % M == R`, `S >= V` or `S > V`, S a symbol of the input's dims"


def _apply(e: ast.Expr, rules: dict[str, SymbolRule], evaluate) -> None:
    loc = getattr(e, "loc", None)
    if isinstance(e, ast.BinOp) and e.op == "==" and isinstance(e.left, ast.BinOp) and e.left.op == "%":
        rule = _rule(e.left.left, rules, loc)
        modulus, rest = _int(e.left.right, evaluate, "the modulus"), _int(e.right, evaluate, "the remainder")
        if modulus < 1 or not 0 <= rest < modulus:
            raise CnnError(f"constraint on '{rule.name}': needs a positive modulus and 0 <= remainder < modulus, "
                           f"got {rule.name} % {modulus} == {rest}", loc)
        if rule.modulus > 1:
            raise CnnError(f"'{rule.name}' already has the constraint {rule.name} % {rule.modulus} == {rule.rest}; "
                           "state one", loc)
        rule.modulus, rule.rest = modulus, rest
        return
    if isinstance(e, ast.BinOp) and e.op in (">=", ">"):
        rule = _rule(e.left, rules, loc)
        bound = _int(e.right, evaluate, "the bound") + (1 if e.op == ">" else 0)
        rule.minimum = max(rule.minimum, bound)
        return
    raise CnnError(f"a `where` constraint has the form {_FORMS}", loc)


def _rule(e: ast.Expr, rules: dict[str, SymbolRule], loc: Loc) -> SymbolRule:
    if not isinstance(e, ast.Name):
        raise CnnError(f"a `where` constraint has the form {_FORMS}", loc)
    if e.id not in rules:
        known = ", ".join(rules) or "none"
        raise CnnError(f"'{e.id}' is not a symbol of an input's dims (the symbols: {known})", e.loc)
    return rules[e.id]


def _int(e: ast.Expr, evaluate, what: str) -> int:
    value = evaluate(e)
    if not isinstance(value, int) or isinstance(value, bool):
        raise CnnError(f"{what} of a constraint must be an int", getattr(e, "loc", None))
    return value


def pin_value(name: str, text: str, rule: SymbolRule) -> int:
    """The value of `-D NAME=VALUE` for a symbol: a positive int that meets the symbol's rule."""
    try:
        value = int(text)
    except ValueError:
        raise CnnError(f"-D {name}={text}: '{name}' is a symbolic size: give a positive integer") from None
    if value < 1:
        raise CnnError(f"-D {name}={text}: a size must be positive")
    if not rule.allows(value):
        raise CnnError(f"-D {name}={value}: breaks the spec's constraint {rule.describe()}")
    return value


def named_shapes(graph, given: dict) -> dict[str, tuple]:
    """--shape's shapes keyed by input name (an unnamed one is the network's only input)."""
    out = {}
    for name, shape in given.items():
        if name is None:
            if len(graph.inputs) != 1:
                raise CnnError(f"--shape {'x'.join(map(str, shape))}: the network has {len(graph.inputs)} inputs "
                               f"({', '.join(graph.inputs)}); name one, as {graph.inputs[0]}=...")
            name = graph.inputs[0]
        if name not in graph.inputs:
            raise CnnError(f"--shape {name}=...: the network has no input '{name}' (its inputs: "
                           f"{', '.join(graph.inputs)})")
        out[name] = tuple(shape)
    return out


def pins_for_shapes(graph, given: dict) -> dict[str, str]:
    """`-D` pins that elaborate `graph`'s spec at the input shapes `given` (`--shape x=1x3x512x512`
    gives H=512, W=512 and N=1); a shape that breaks a static dim or a constraint is an error."""
    from cnncomp.ops.dims import bind_symbols

    minimums = {name: rule.get("min", 1) for name, rule in graph.meta.get("symbols", {}).items()}
    declared = {n: tuple(graph.layer(n).shape) for n in graph.inputs}
    sizes = bind_symbols(declared, named_shapes(graph, given), minimums, "--shape: input")
    return {name: str(value) for name, value in sizes.items()}
