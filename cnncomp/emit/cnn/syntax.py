"""The .cnn text of an AST (frontend/cnn/ast.py), and the small builders the writer makes its nodes with.

`unparse` is the inverse of the parser on what the writer builds: every
expression is written with the fewest parentheses the grammar's precedence
needs (an `if` among several call arguments is bracketed to read better), a
pipeline of more than one stage puts each further stage on its own line
(`\\n    -> stage`), and a block's body is indented by four spaces. While it
writes, it gives every node the location of the line it lands on, and records
the text in `errors.SOURCES`, so that an error or a comment lookup on the
program (--emit torch reads the header comment as its docstring) finds the
written line.
"""

from __future__ import annotations

import re

from cnncomp.errors import SOURCES, Loc
from cnncomp.frontend.cnn import ast
from cnncomp.ir.identifiers import KEYWORDS
from cnncomp.ops.dims import SymDim, to_language

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
NOWHERE = Loc("<written>", 1, 1)  # the location nodes carry until unparse places them

# precedence, lowest first, as in the grammar
_IF, _PIPE, _OR, _AND, _NOT, _COMPARE, _SUM, _PRODUCT, _UNARY, _ATOM = range(10)
_BINARY = {"or": _OR, "and": _AND, "+": _SUM, "-": _SUM, "*": _PRODUCT, "//": _PRODUCT, "/": _PRODUCT,
           "%": _PRODUCT, **{op: _COMPARE for op in ("==", "!=", "<", "<=", ">", ">=")}}


# ---- names -------------------------------------------------------------------------------------------


def stage_name(name: str) -> ast.StageName:
    """A layer name after `as`: bare when it is a dotted identifier, else quoted (a template without `{}`)."""
    bare = bool(_DOTTED.fullmatch(name)) and name.split(".")[0] not in KEYWORDS
    return ast.StageName(name, not bare, NOWHERE)


def expression(text: str) -> ast.Expr:
    """The expression that the language reads from `text` (a symbolic size, a constraint)."""
    from cnncomp.frontend.cnn.parser import parse

    return parse(f"let v = {text}\n", "<writer>").stmts[0].value


def value_expr(value) -> ast.Expr:
    """A compile-time value (int, float, bool, string, tuple) as an expression."""
    if isinstance(value, SymDim):  # a str subclass: first
        return expression(to_language(value))
    if isinstance(value, bool):
        return ast.Bool(value, NOWHERE)
    if isinstance(value, (int, float)):
        return ast.Num(value, NOWHERE)
    if isinstance(value, str):
        return ast.Str(value, NOWHERE)
    if isinstance(value, tuple):
        return ast.TupleExpr([value_expr(v) for v in value], NOWHERE)
    if value is None:
        return ast.Name("none", NOWHERE)  # the reference's spelling of an absent argument (`mask=none`)
    raise TypeError(f"no .cnn expression for {value!r}")


# ---- expressions ---------------------------------------------------------------------------------------


def expr_text(e: ast.Expr, at_least: int = _IF) -> str:
    """An expression's text, bracketed when it binds more loosely than its place requires."""
    text, level = _expr(e)
    return f"({text})" if level < at_least else text


def _expr(e) -> tuple[str, int]:
    if isinstance(e, ast.Num):
        text = repr(e.value)
        return text, _UNARY if text.startswith("-") else _ATOM
    if isinstance(e, ast.Bool):
        return ("true" if e.value else "false"), _ATOM
    if isinstance(e, ast.Str):
        return f'"{e.value}"', _ATOM
    if isinstance(e, ast.Name):
        return e.id, _ATOM
    if isinstance(e, ast.In):
        return "in", _ATOM
    if isinstance(e, ast.TupleExpr):
        items = [expr_text(i) for i in e.items]
        return "(" + (items[0] + "," if len(items) == 1 else ", ".join(items)) + ")", _ATOM
    if isinstance(e, ast.Call):
        return f"{e.func}({_args(e.args)})", _ATOM
    if isinstance(e, ast.UnaryOp):
        if e.op == "not":
            return "not " + expr_text(e.operand, _NOT), _NOT
        return "-" + expr_text(e.operand, _UNARY), _UNARY
    if isinstance(e, ast.BinOp):
        level = _BINARY[e.op]
        right = level + 1  # left-associative; comparisons do not chain
        left = level + 1 if level == _COMPARE else level
        return f"{expr_text(e.left, left)} {e.op} {expr_text(e.right, right)}", level
    if isinstance(e, ast.IfExpr):
        return f"if {expr_text(e.cond)} then {expr_text(e.then)} else {expr_text(e.orelse)}", _IF
    if isinstance(e, ast.Pipeline):
        stages = [stage_text(s) for s in e.stages]
        return " -> ".join([expr_text(e.head, _OR)] + stages[:1]) + "".join("\n    -> " + s for s in stages[1:]), _PIPE
    raise TypeError(f"no text for {type(e).__name__}")


def _args(args: list[ast.Arg]) -> str:
    parts = []
    for a in args:
        value = expr_text(a.value, _PIPE if len(args) > 1 else _IF)  # an `if` among others is bracketed
        parts.append(value if a.name is None else f"{a.name}={value}")
    return ", ".join(parts)


def stage_text(s) -> str:
    if isinstance(s, ast.RepeatStage):
        var = f" as {s.var}" if s.var else ""
        return f"repeat {expr_text(s.count, _SUM)}{var} {{ {' -> '.join(stage_text(b) for b in s.body)} }}"
    text = f"{s.func}({_args(s.args)})" if s.args else s.func
    if s.alias is not None:
        text += " as " + (f'"{s.alias.text}"' if s.alias.is_template else s.alias.text)
    return text


# ---- statements ----------------------------------------------------------------------------------------


def _stmt_text(s) -> str:
    if isinstance(s, ast.Network):
        return f"network {s.name}"
    if isinstance(s, ast.Input):
        where = " where " + ", ".join(expr_text(c) for c in s.where) if s.where else ""
        return f"input {s.name}: {s.dtype or ''}[{', '.join(expr_text(d) for d in s.dims)}]{where}"
    if isinstance(s, ast.Let):
        return f"let {s.name} = {expr_text(s.value)}"
    if isinstance(s, ast.Assign):
        return f"{s.name} = {expr_text(s.value)}"
    if isinstance(s, ast.Return):
        return f"return {expr_text(s.value)}"
    if isinstance(s, ast.Output):
        return "output " + ", ".join(n.id for n in s.names)
    if isinstance(s, ast.Import):
        return f'import "{s.path}"'
    raise TypeError(f"no text for {type(s).__name__}")


def unparse(program: ast.Program, header: str = "") -> str:
    """The program as .cnn text, `header` as leading comment lines; places every node on its line and
    records the text under `program.file` (errors.SOURCES)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    previous = None
    for stmt in program.stmts:
        if previous is not None and (type(stmt) is not type(previous) or isinstance(stmt, ast.BlockDef)):
            lines.append("")  # a blank line between kinds of statements and around blocks
        previous = stmt
        if isinstance(stmt, ast.BlockDef):
            params = ", ".join(p.name + ("" if p.default is None else f"={expr_text(p.default)}")
                               for p in stmt.params)
            _place(stmt, program.file, len(lines) + 1, 1, shallow=True)
            lines.append(f"block {stmt.name}({params}) {{")
            for inner in stmt.body:
                _place(inner, program.file, len(lines) + 1, 5)
                lines += ["    " + line for line in _stmt_text(inner).split("\n")]
            lines.append("}")
            continue
        _place(stmt, program.file, len(lines) + 1, 1)
        lines += _stmt_text(stmt).split("\n")
    text = "\n".join(lines) + "\n"
    SOURCES.add(program.file, text)
    return text


def _place(node, file: str, line: int, col: int, shallow: bool = False) -> None:
    """Give a statement (and, unless shallow, everything in it) the location of its first line; a pipeline's
    stages after the first get the lines they are written on."""
    loc = Loc(file, line, col)
    stack = [(node, loc)]
    while stack:
        n, where = stack.pop()
        if isinstance(n, list):
            stack.extend((item, where) for item in n)
            continue
        if not hasattr(n, "__dataclass_fields__") or isinstance(n, Loc):
            continue
        if "loc" in n.__dataclass_fields__:
            n.loc = where
        if shallow and n is node:
            for p in getattr(n, "params", []):
                p.loc = where
            continue
        if isinstance(n, ast.Pipeline):
            stack.append((n.head, where))
            for k, stage in enumerate(n.stages):
                stage_loc = where if k == 0 else Loc(file, where.line + k, 5 + (where.col - 1))
                stack.append((stage, stage_loc))
            continue
        stack.extend((getattr(n, f), where) for f in n.__dataclass_fields__ if f != "loc")
