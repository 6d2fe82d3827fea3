"""Expression printing for --emit torch: the language's compile-time values as Python source,
with the fewest parentheses Python's precedences allow.

`ValuePrinter` is the part of a class generator (classgen.ClassGen) that writes value
expressions in one of three places: `init` (__init__'s locals), `fwd` (forward(), where a block's
parameters are attributes of self) or `global` (module level: constants only).
"""

from __future__ import annotations

from dataclasses import dataclass

from cnncomp.emit.torch.names import Var
from cnncomp.emit.torch.unsupported import NotSupported
from cnncomp.frontend.cnn import ast

# Python operator precedences (higher binds tighter).
P_COND, P_OR, P_AND, P_NOT, P_CMP, P_SUM, P_PROD, P_NEG, P_ATOM = 0, 1, 2, 3, 4, 7, 8, 9, 11
BINOP_PREC = {"or": P_OR, "and": P_AND, "+": P_SUM, "-": P_SUM, "*": P_PROD, "//": P_PROD, "%": P_PROD,
              "==": P_CMP, "!=": P_CMP, "<": P_CMP, "<=": P_CMP, ">": P_CMP, ">=": P_CMP}


@dataclass
class TVal:
    """A tensor: its forward expression, its __init__ shape expression."""

    fwd: str
    shape: str
    prec: int = P_ATOM
    depth: int = 0  # calls nested in fwd since it was last a variable
    ends_line: bool = False  # the next stage starts a new line


def py_string(text: str) -> str:
    """A Python string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value) -> str:
    """A compile-time value of the language as Python source."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return py_string(value)
    if isinstance(value, tuple):
        items = [literal(v) for v in value]
        return "(" + items[0] + ",)" if len(items) == 1 else "(" + ", ".join(items) + ")"
    raise NotSupported(f"--emit torch: cannot write the value {value!r}")


def paren(code: tuple[str, int], need: int) -> str:
    """Code of some precedence, parenthesized where a place needs a higher one."""
    text, prec = code
    return f"({text})" if prec < need else text


def is_literal(e) -> bool:
    """Whether an expression is written as a literal (a number, string, bool or tuple of them)."""
    if isinstance(e, (ast.Num, ast.Str, ast.Bool)):
        return True
    if isinstance(e, ast.UnaryOp) and e.op == "-":
        return isinstance(e.operand, ast.Num)
    if isinstance(e, ast.TupleExpr):
        return all(is_literal(i) for i in e.items)
    return False


def number_literal(e):
    """The number an expression is written as (`3`, `-1`), or None."""
    if isinstance(e, ast.Num):
        return e.value
    if isinstance(e, ast.UnaryOp) and e.op == "-" and isinstance(e.operand, ast.Num):
        return -e.operand.value
    return None


class ValuePrinter:
    """Value expressions as Python (a mixin of ClassGen: it reads the scopes of names.Naming)."""

    def vcode(self, e, mode: str) -> tuple[str, int]:
        """A value expression as Python: mode init (locals), fwd (stored on self) or global (constants only)."""
        if isinstance(e, ast.Num):
            return (repr(e.value), P_ATOM if e.value >= 0 else P_NEG)
        if isinstance(e, ast.Str):
            return (py_string(e.value), P_ATOM)
        if isinstance(e, ast.Bool):
            return ("True" if e.value else "False", P_ATOM)
        if isinstance(e, ast.Name):
            return (self.name_code(e, mode), P_ATOM)
        if isinstance(e, ast.TupleExpr):
            items = [paren(self.vcode(i, mode), P_COND + 1) for i in e.items]
            return ("(" + items[0] + ",)" if len(items) == 1 else "(" + ", ".join(items) + ")", P_ATOM)
        if isinstance(e, ast.UnaryOp):
            if e.op == "not":
                return ("not " + paren(self.vcode(e.operand, mode), P_NOT), P_NOT)
            return ("-" + paren(self.vcode(e.operand, mode), P_NEG), P_NEG)
        if isinstance(e, ast.BinOp):
            if e.op == "/":
                left, right = self.vcode(e.left, mode)[0], self.vcode(e.right, mode)[0]
                self.em.helpers.add("div")
                return (f"div({left}, {right})", P_ATOM)
            prec = BINOP_PREC[e.op]
            left_need = prec + 1 if prec == P_CMP else prec
            left = paren(self.vcode(e.left, mode), left_need)
            right = paren(self.vcode(e.right, mode), prec + 1)
            return (f"{left} {e.op} {right}", prec)
        if isinstance(e, ast.IfExpr):
            cond = paren(self.vcode(e.cond, mode), P_OR)
            then = paren(self.vcode(e.then, mode), P_OR)
            orelse = paren(self.vcode(e.orelse, mode), P_COND)
            return (f"{then} if {cond} else {orelse}", P_COND)
        if isinstance(e, ast.Call) and e.func in ("channels", "spatial", "rank", "min", "max") \
                and e.func not in self.em.defs.blocks:
            return self.builtin(e, mode)
        raise NotSupported(f"--emit torch: cannot translate this expression as a value ({type(e).__name__})",
                           getattr(e, "loc", None))

    def name_code(self, e: ast.Name, mode: str) -> str:
        b = self.lookup(e.id) if mode != "global" else None
        if b is not None:
            if b.kind == "tensor":
                raise NotSupported(f"--emit torch: '{e.id}' is a tensor, used as a value", e.loc)
            if mode == "fwd" and b.kind == "value":
                return f"self.{self.attr(b)}"
            return b.py
        if e.id in self.em.defs.lets:
            self.em.used_lets.add(e.id)
            return self.em.let_names[e.id]
        if e.id == "same":
            return '"same"'
        raise NotSupported(f"--emit torch: unknown name '{e.id}'", e.loc)

    def builtin(self, e: ast.Call, mode: str) -> tuple[str, int]:
        args = [a.value for a in e.args]
        if e.func in ("min", "max"):
            return (f"{e.func}({', '.join(paren(self.vcode(a, mode), P_COND + 1) for a in args)})", P_ATOM)
        if len(args) != 1 or mode == "global":
            raise NotSupported(f"--emit torch: {e.func}() takes one tensor", e.loc)
        t = self.tensor_ref(args[0])
        if mode == "init":
            return {"channels": (f"{t.shape}[1]", P_ATOM), "spatial": (f"tuple({t.shape}[2:])", P_ATOM),
                    "rank": (f"len({t.shape})", P_ATOM)}[e.func]
        return {"channels": (f"{t.py}.shape[1]", P_ATOM), "spatial": (f"tuple({t.py}.shape[2:])", P_ATOM),
                "rank": (f"{t.py}.dim()", P_ATOM)}[e.func]

    def tensor_ref(self, e) -> Var:
        if isinstance(e, ast.In) and self.block is not None:
            b = self.lookup("in")
            return Var(b.py, b.shape)
        if isinstance(e, ast.Name):
            b = self.lookup(e.id)
            if b is not None and b.kind == "tensor":
                return Var(b.py, b.shape)
        raise NotSupported("--emit torch: channels(), spatial() and rank() take a tensor's name or `in`",
                           getattr(e, "loc", None))

    def is_tensor(self, e) -> bool:
        if isinstance(e, (ast.In, ast.Pipeline)):
            return True
        if isinstance(e, ast.Name):
            b = self.lookup(e.id)
            return b is not None and b.kind == "tensor"
        if isinstance(e, ast.BinOp) and e.op in ("+", "*"):
            return self.is_tensor(e.left) or self.is_tensor(e.right)
        if isinstance(e, ast.IfExpr):
            return self.is_tensor(e.then) or self.is_tensor(e.orelse)
        if isinstance(e, ast.Call):
            return e.func in ("concat", "add", "mul") and e.func not in self.em.defs.blocks
        return False

    # ---- counters and layer paths ----------------------------------------------------------------

    def sym_code(self, s, mode: str) -> tuple[str, int]:
        if isinstance(s, int):
            return (str(s), P_ATOM)
        kind = s[0]
        if kind == "var":
            return (s[1], P_ATOM)
        if kind == "expr":
            return self.vcode(s[1], mode)
        if kind == "sum":
            return (" + ".join(paren(self.sym_code(t, mode), P_SUM + 1) for t in s[1]), P_SUM)
        if kind == "prod":
            return (" * ".join(paren(self.sym_code(t, mode), P_PROD + 1) for t in s[1]), P_PROD)
        cond = paren(self.vcode(s[1], mode), P_OR)
        then, orelse = paren(self.sym_code(s[2], mode), P_OR), paren(self.sym_code(s[3], mode), P_COND)
        return (f"{then} if {cond} else {orelse}", P_COND)
