"""What the ops' PyTorch-source facet (`Op.torch_source`, for --emit torch) shares: the helper
sections of `torch_prelude.py` that a generated file may copy.

`torch_prelude.py` is real Python (linted, imported by `deform.py`), but the emitter uses it as
text: each section starts with a `# @ NAME: DEPENDENCIES` line and ends where the next begins.
Reading it here, as package data, needs no torch, so source can be written where torch is absent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class PreludeSection:
    """One helper section: its name, the sections it needs, its source, the names it defines."""

    name: str
    needs: tuple[str, ...]
    source: str
    defines: frozenset[str]


@lru_cache(maxsize=1)
def prelude_sections() -> dict[str, PreludeSection]:
    """The sections of torch_prelude.py, in file order, by name."""
    text = resources.files("cnncomp.ops").joinpath("torch_prelude.py").read_text(encoding="utf-8")
    sections: dict[str, PreludeSection] = {}
    for chunk in re.split(r"^# @ ", text, flags=re.MULTILINE)[1:]:
        header, _, body = chunk.partition("\n")
        name, _, needs = header.partition(":")
        body = body.strip("\n")
        defines = frozenset(_top_level_names(body))
        sections[name.strip()] = PreludeSection(name.strip(), tuple(d.strip() for d in needs.split(",") if d.strip()),
                                                body, defines)
    return sections


def _top_level_names(body: str) -> set[str]:
    names = set()
    for match in re.finditer(r"^(?:def|class) (\w+)|^(\w+) =", body, flags=re.MULTILINE):
        names.add(match.group(1) or match.group(2))
    return names
