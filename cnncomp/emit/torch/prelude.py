"""The helpers a generated file may define: the sections of cnncomp/ops/torch_prelude.py that
the network uses, with the sections they need, in the prelude's order."""

from __future__ import annotations

from cnncomp.ops.torch_source import prelude_sections

PRELUDE = prelude_sections()
# Every name the helpers may define: spec names must not take them.
PRELUDE_NAMES = frozenset(PRELUDE).union(*(section.defines for section in PRELUDE.values()))
# Helpers written before the classes: `div` may be called by constants and parameter defaults,
# `Modules` is a base class.
TOP_HELPERS = ("div", "Modules")


def helper_closure(helpers: set[str]) -> list[str]:
    """The helpers with the sections they need, in the prelude's order."""
    done: list[str] = []

    def add(name: str):
        if name in done or name == "math":  # `math` is an import, not a section
            return
        for need in PRELUDE[name].needs:
            add(need)
        done.append(name)

    for name in sorted(helpers):
        add(name)
    order = list(PRELUDE)
    return sorted(done, key=order.index)
