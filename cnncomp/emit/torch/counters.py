"""Symbolic stage counters (--emit torch): the numbers of unnamed stages, as the elaborator
counts them, when they depend on loop variables and conditions.
"""

from __future__ import annotations

from cnncomp.frontend.cnn import ast

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
        return ast_names(s[1])
    if s[0] in ("sum", "prod"):
        return set().union(*(sym_names(t) for t in s[1]))
    return ast_names(s[1]) | sym_names(s[2]) | sym_names(s[3])


def ast_names(node) -> set[str]:
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
