"""The spec's comments, by line, so that generated code carries them (--emit torch)."""

from __future__ import annotations

from pathlib import Path

from cnncomp.errors import Loc
from cnncomp.frontend.cnn import ast


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


def last_line(node) -> int:
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


def statement_comments(stmts: list, comments: Comments, start: int, split: bool = False) -> dict:
    """Comments for each statement (by index): those on the lines since the previous statement, then
    those on its own lines (with split, the two lists apart)."""
    out: dict = {}
    previous_end = start
    for i, stmt in enumerate(stmts):
        first = stmt.loc.line
        last = last_line(stmt) if not isinstance(stmt, ast.BlockDef) else first
        leading, own = comments.between(previous_end + 1, first - 1), comments.between(first, last)
        if split:
            out[i] = (leading, own)
        elif leading or own:
            out[i] = leading + own
        previous_end = last
        if isinstance(stmt, ast.BlockDef):
            previous_end = comments.closing_line(max(last_line(stmt.body), first))
    return out
