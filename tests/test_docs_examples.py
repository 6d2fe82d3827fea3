"""docs/language.md stays true: its examples elaborate and its layer table matches the registry.

Conventions of the page:

- Every fenced block with the info string `cnn` is a runnable example. After
  any leading comment lines it starts with `network` (a whole spec, which
  must elaborate as it is) or with `block` (block definitions, which must
  elaborate inside HARNESS below, called as given by an HTML comment right
  before the fence: `<!-- call: bottleneck(64, 256) -->`).
- An optional `<!-- layers: a.0 b.conv1 ... -->` comment right before a
  fence lists layer names that the example must produce.
- An optional `<!-- lint: CODE CODE ... -->` comment lists the lint warning
  codes the example produces, one per warning, in any order.
- The layer table sits between `<!-- layer-table:start -->` and
  `<!-- layer-table:end -->`; its first column names a layer (`` `conv` ``)
  and its second gives the arguments as `signature(op)` renders them.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import pytest

from cnncomp.frontend.cnn.loader import load_text, standard_blocks
from cnncomp.ops.registry import REQUIRED, all_ops

PAGE = Path(__file__).resolve().parent.parent / "docs" / "language.md"
TEXT = PAGE.read_text(encoding="utf-8")

HARNESS = """network harness
input x: [N, 64, 56, 56]
{code}
y = x -> {call}
output y
"""

_FENCE = re.compile(r"^```cnn[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_COMMENT = re.compile(r"<!--\s*([\w-]+)\s*:\s*(.*?)\s*-->\s*$", re.S)


def _annotations(before: str) -> dict[str, str]:
    """The `<!-- key: value -->` comments directly above a fence (only whitespace between)."""
    notes: dict[str, str] = {}
    rest = before.rstrip()
    while rest.endswith("-->"):
        start = rest.rfind("<!--")
        if start < 0:
            break
        m = _COMMENT.match(rest[start:])
        if m is None:
            break
        notes.setdefault(m.group(1), m.group(2))
        rest = rest[:start].rstrip()
    return notes


def _first_word(code: str) -> str:
    for line in code.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped.split()[0].split("(")[0]
    return ""


def _examples() -> list[tuple[int, str, dict[str, str]]]:
    out = []
    for m in _FENCE.finditer(TEXT):
        line = TEXT.count("\n", 0, m.start()) + 1
        out.append((line, m.group(1), _annotations(TEXT[: m.start()])))
    return out


EXAMPLES = _examples()


def test_the_page_has_examples_of_both_kinds():
    kinds = {_first_word(code) for _, code, _ in EXAMPLES}
    assert {"network", "block"} <= kinds, kinds
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("line, code, notes", EXAMPLES, ids=[f"line{line}" for line, _, _ in EXAMPLES])
def test_cnn_example_elaborates(line, code, notes):
    kind = _first_word(code)
    if kind == "network":
        text = code
    elif kind == "block":
        assert "call" in notes, (f"docs/language.md:{line}: a `cnn` block example needs "
                                 "`<!-- call: NAME(ARGS) -->` right before its fence")
        text = HARNESS.format(code=code, call=notes["call"])
    else:
        pytest.fail(f"docs/language.md:{line}: a `cnn` example must start with `network` or `block` "
                    f"(use another info string for fragments), got {kind!r}")
    graph = load_text(text, f"language.md:{line}")
    assert graph.outputs
    names = {layer.name for layer in graph.layers()}
    missing = [n for n in notes.get("layers", "").split() if n not in names]
    assert not missing, f"docs/language.md:{line}: layers {missing} not in {sorted(names)}"
    if "lint" in notes:
        from cnncomp.analysis.advice import lint

        codes = sorted(w.code for w in lint(graph))
        assert codes == sorted(notes["lint"].split()), f"docs/language.md:{line}: lint gives {codes}"


# ---- the layer table -------------------------------------------------------------------------

def fmt_default(value) -> str:
    """A default as the table writes it: in .cnn syntax."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            return f"{mantissa}e{int(exponent)}"
        if len(text) > 8:
            frac = Fraction(value).limit_denominator(100)
            if float(frac) == value:
                return f"{frac.numerator}.0/{frac.denominator}"
        return text
    return str(value)


def signature(op) -> str:
    """The arguments of an op as the table lists them: positional order, defaults after '='."""
    parts = ["t1, t2, ..."] if op.variadic else []
    for p in op.params:
        if p.default is REQUIRED:
            parts.append(p.name)
        elif p.default is None:  # pooling strides default to the kernel; other optional arguments are absent
            parts.append(f"{p.name}=k" if p.name == "s" else f"{p.name}=none")
        else:
            parts.append(f"{p.name}={fmt_default(p.default)}")
    return ", ".join(parts)


def _table_rows() -> dict[str, str]:
    start, end = "<!-- layer-table:start -->", "<!-- layer-table:end -->"
    assert start in TEXT and end in TEXT, "docs/language.md lost its layer-table markers"
    body = TEXT.split(start, 1)[1].split(end, 1)[0]
    rows: dict[str, str] = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`([a-z_0-9]+)`", cells[0]) if cells else None
        if m is None:
            continue
        assert m.group(1) not in rows, f"layer {m.group(1)} appears twice in the table"
        rows[m.group(1)] = cells[1].strip("`") if len(cells) > 1 else ""
    return rows


def test_layer_table_names_every_registered_op():
    rows = _table_rows()
    ops = set(all_ops())
    assert not ops - set(rows), f"layers missing from the table in docs/language.md: {sorted(ops - set(rows))}"
    assert not set(rows) - ops, f"the table lists layers that are not registered: {sorted(set(rows) - ops)}"


@pytest.mark.parametrize("name", sorted(all_ops()))
def test_layer_table_arguments_match_the_registry(name):
    rows = _table_rows()
    if name not in rows:
        pytest.skip("reported by test_layer_table_names_every_registered_op")
    want = signature(all_ops()[name])
    assert rows[name] == want, (f"docs/language.md: the arguments of `{name}` should read "
                                f"`{want}`, the table says `{rows[name]}`")


def test_standard_blocks_are_documented():
    section = TEXT.split("## Standard blocks", 1)[1].split("\n## ", 1)[0]
    missing = [b for b in standard_blocks() if f"`{b}(" not in section]
    assert not missing, f"standard blocks missing from docs/language.md: {missing}"
