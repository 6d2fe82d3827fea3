"""Code writing for --emit torch: method bodies as nested blocks of lines, and docstring text."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field


@dataclass
class Block:
    """Lines of code, with nested blocks (`if`, `else`, `for`)."""

    header: str | None = None
    kind: str = "root"
    items: list = field(default_factory=list)
    created: set = field(default_factory=set)  # dynamic containers created in this block

    def render(self, indent: int) -> list[str]:
        out = []
        pad = " " * indent
        inner = indent
        if self.header is not None:
            out.append(pad + self.header)
            inner = indent + 4
        if not self.items and self.header is not None:
            out.append(" " * inner + "pass")
        for item in self.items:
            if isinstance(item, Block):
                out += item.render(inner)
            else:
                out.append((" " * inner + item) if item else "")
        return out


class Writer:
    """One method body being written."""

    def __init__(self):
        self.root = Block()
        self.stack = [self.root]

    def line(self, text: str) -> None:
        self.stack[-1].items.append(text)

    def comments(self, texts: list[str]) -> None:
        for t in texts:
            self.line(f"# {t}" if t else "#")

    def open(self, header: str, kind: str) -> None:
        block = Block(header, kind)
        self.stack[-1].items.append(block)
        self.stack.append(block)

    def close(self) -> None:
        self.stack.pop()

    def position(self) -> list[tuple[Block, int]]:
        """Where the next line goes: each open block with the index of its open child (or next line)."""
        chain = [(b, len(b.items) - 1) for b in self.stack[:-1]]
        return chain + [(self.stack[-1], len(self.stack[-1].items))]


def wrap_doc(lines: list[str]) -> list[str]:
    """Docstring lines wrapped at 88 characters."""
    out = []
    for line in lines:
        if len(line) <= 88:
            out.append(line)
        else:
            out += textwrap.wrap(line, 88, break_long_words=False, break_on_hyphens=False)
    return out


def doc_escape(text: str) -> str:
    """Text that can stand inside a triple-quoted docstring."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def fmt_shape(shape) -> str:
    """A shape as the docs write it: `[N, 3, 224, 224]`."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def indent_doc(lines: list[str], indent: int) -> str:
    """A docstring of these lines, indented."""
    pad = " " * indent
    lines = wrap_doc(lines)
    if len(lines) == 1:
        return f'{pad}"""{doc_escape(lines[0])}"""'
    body = "\n".join((pad + doc_escape(line)) if line else "" for line in lines[1:])
    return f'{pad}"""{doc_escape(lines[0])}\n{body}\n{pad}"""'

