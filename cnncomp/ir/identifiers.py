"""Identifiers of the .cnn language (ASCII letters, digits and `_`, not a keyword) made from any name.

The lexer is ASCII-only, so a name that comes from outside (an ONNX tensor, a file name given to `-o`)
is mapped here before it becomes a variable, an input, an output, a symbolic size or the network's name.
"""

from __future__ import annotations

import re
import unicodedata

KEYWORDS = frozenset({"network", "input", "output", "let", "block", "return", "repeat", "as", "if", "then", "else",
                      "and", "or", "not", "true", "false", "import", "in", "where"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def ascii_identifier(text: str, fallback: str = "t") -> str:
    """An identifier made from `text`: accents dropped (`é` -> `e`), any other character `_`, `fallback_`
    before a leading digit, `_` after a keyword."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    name = re.sub(r"[^A-Za-z0-9_]", "_", plain) or fallback
    if not _IDENT.match(name):
        name = f"{fallback}_{name}"
    return name + "_" if name in KEYWORDS else name


def is_identifier(text: str) -> bool:
    """Whether `text` can stand as a name in a spec as it is."""
    return bool(_IDENT.fullmatch(text)) and text not in KEYWORDS
