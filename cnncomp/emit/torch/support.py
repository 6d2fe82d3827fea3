"""Support for --emit torch: the spec's comments and symbolic stage counters."""

from __future__ import annotations

from pathlib import Path

from cnncomp.frontend.cnn import ast
from cnncomp.errors import Loc

# ---- comments of the spec ---------------------------------------------------------------------

def _source_lines(file: str) -> list[str]:
    from cnncomp.errors import SOURCES

    lines = SOURCES.texts.get(file)
    if lines is not None:
        return lines
    try:
        return Path(file).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []


def _split_comment(line: str) -> tuple[str, str | None]:
    """A source line as (code, comment text or None); a `#` inside a string is not a comment."""
    in_string = False
    for i, ch in enumerate(line):
        if ch == '"':
            in_string = not in_string
        elif ch == "#" and not in_string:
            return line[:i], line[i + 1:].strip()
    return line, None


class Comments:
    """The comments of one .cnn file, by line."""

    def __init__(self, file: str):
        self.lines = _source_lines(file)
        self.parts = [_split_comment(line) for line in self.lines]

    def comment_only(self, line: int) -> bool:
        code, text = self.parts[line - 1]
        return text is not None and not code.strip()

    def between(self, first: int, last: int) -> list[str]:
        """Comment texts on lines first..last (1-based, inclusive)."""
        out = []
        for line in range(max(first, 1), min(last, len(self.lines)) + 1):
            text = self.parts[line - 1][1]
            if text is not None:
                out.append(text)
        return out

    def closing_line(self, after: int, char: str = "}") -> int:
        """The first line from `after` on whose code holds `char`."""
        for line in range(max(after, 1), len(self.lines) + 1):
            if char in self.parts[line - 1][0]:
                return line
        return len(self.lines)


def _last_line(node) -> int:
    """The last source line of an AST node."""
    best = 0
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            stack.extend(n)
            continue
        if not hasattr(n, "__dataclass_fields__"):
            continue
        loc = getattr(n, "loc", None)
        if isinstance(loc, Loc):
            best = max(best, loc.line)
        for name in n.__dataclass_fields__:
            if name != "loc":
                stack.append(getattr(n, name))
    return best


def _statement_comments(stmts: list, comments: Comments, start: int, split: bool = False) -> dict:
    """Comments for each statement (by index): those on the lines since the previous statement, then
    those on its own lines (with split, the two lists apart)."""
    out: dict = {}
    previous_end = start
    for i, stmt in enumerate(stmts):
        first = stmt.loc.line
        last = _last_line(stmt) if not isinstance(stmt, ast.BlockDef) else first
        leading, own = comments.between(previous_end + 1, first - 1), comments.between(first, last)
        if split:
            out[i] = (leading, own)
        elif leading or own:
            out[i] = leading + own
        previous_end = last
        if isinstance(stmt, ast.BlockDef):
            previous_end = comments.closing_line(max(_last_line(stmt.body), first))
    return out


# ---- symbolic stage counters ----------------------------------------------------------------------
#
# A counter is an int or a tuple: ("var", py name), ("expr", AST), ("sum", (...)), ("prod", (...)),
# ("cond", AST condition, counter, counter).

def sym_add(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    terms = []
    const = 0
    for s in (a, b):
        for t in (s[1] if isinstance(s, tuple) and s[0] == "sum" else (s,)):
            if isinstance(t, int):
                const += t
            else:
                terms.append(t)
    if const:
        terms.insert(0, const)
    if not terms:
        return 0
    return terms[0] if len(terms) == 1 else ("sum", tuple(terms))


def sym_mul(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if a == 0 or b == 0:
        return 0
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(b, int):
        a, b = b, a
    return ("prod", (a, b))


def sym_names(s) -> set[str]:
    """Spec and Python names a counter refers to."""
    if isinstance(s, int):
        return set()
    if s[0] == "var":
        return {s[1]}
    if s[0] == "expr":
        return _ast_names(s[1])
    if s[0] in ("sum", "prod"):
        return set().union(*(sym_names(t) for t in s[1]))
    return _ast_names(s[1]) | sym_names(s[2]) | sym_names(s[3])


def _ast_names(node) -> set[str]:
    out = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            stack.extend(n)
        elif isinstance(n, ast.Name):
            out.add(n.id)
        elif hasattr(n, "__dataclass_fields__"):
            stack.extend(getattr(n, f) for f in n.__dataclass_fields__ if f != "loc")
    return out


def count_sym(count) -> object:
    """A repeat count as a counter: an int when it is written as one."""
    return count.value if isinstance(count, ast.Num) and isinstance(count.value, int) else ("expr", count)


def count_stages(stages: list) -> object:
    """How far a list of stages advances its statement's counter."""
    total = 0
    for s in stages:
        if isinstance(s, ast.RepeatStage):
            total = sym_add(total, sym_mul(count_sym(s.count), count_stages(s.body)))
        else:
            total = sym_add(total, 1)
            for a in s.args:
                total = sym_add(total, count_expr(a.value))
    return total


def count_expr(e) -> object:
    """How far evaluating an expression advances its statement's counter."""
    if isinstance(e, ast.Pipeline):
        return sym_add(count_expr(e.head), count_stages(e.stages))
    if isinstance(e, ast.IfExpr):
        then, orelse = count_expr(e.then), count_expr(e.orelse)
        return then if then == orelse else ("cond", e.cond, then, orelse)
    if isinstance(e, ast.BinOp):
        return sym_add(count_expr(e.left), count_expr(e.right))
    if isinstance(e, ast.UnaryOp):
        return count_expr(e.operand)
    if isinstance(e, ast.Call):
        total = 0
        for a in e.args:
            total = sym_add(total, count_expr(a.value))
        return total
    if isinstance(e, ast.TupleExpr):
        total = 0
        for i in e.items:
            total = sym_add(total, count_expr(i))
        return total
    return 0
