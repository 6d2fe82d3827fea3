#!/usr/bin/env python
"""Regenerate the golden summaries of the bundled specs: tests/golden/<spec>.json.

Each golden file is `summarize(cnncomp.load(spec)).to_json()` with file paths made
relative to the repository root (so the files do not depend on where the checkout
lives), one layer per line so that a diff reads layer by layer.

    python tools/regen_golden.py              # every spec in specs/
    python tools/regen_golden.py resnet50 ... # only these (names or paths)

Run it when a change to a spec, to the standard blocks or to the summary is
intended, and review the diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
GOLDEN = ROOT / "tests" / "golden"


def spec_paths() -> list[Path]:
    """The bundled specs, sorted by name."""
    return sorted(SPECS.glob("*.cnn"))


def _relative(value, prefix: str):
    """A JSON value with every string that starts with the repository root made relative to it."""
    if isinstance(value, str):
        return value[len(prefix):] if value.startswith(prefix) else value
    if isinstance(value, list):
        return [_relative(v, prefix) for v in value]
    if isinstance(value, dict):
        return {k: _relative(v, prefix) for k, v in value.items()}
    return value


def golden_summary(spec: Path) -> dict:
    """The golden summary object of a spec: its summary JSON, paths relative to the repository root."""
    import cnncomp
    from cnncomp.analysis.summary import summarize

    graph = cnncomp.load(Path(spec).resolve())
    data = summarize(graph).to_json()
    # Round-trip through JSON so that tuples become lists, as in the stored file.
    return json.loads(json.dumps(_relative(data, str(ROOT) + "/")))


def format_golden(data: dict) -> str:
    """The golden file's text: indented JSON, one layer (or warning) per line."""
    lines = ["{"]
    items = list(data.items())
    for i, (key, value) in enumerate(items):
        sep = "," if i < len(items) - 1 else ""
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f" {json.dumps(key)}: [")
            lines += [f"  {json.dumps(v)}{',' if j < len(value) - 1 else ''}" for j, v in enumerate(value)]
            lines.append(f" ]{sep}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}{sep}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def golden_path(spec: Path) -> Path:
    return GOLDEN / (Path(spec).stem + ".json")


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    wanted = argv or [p.stem for p in spec_paths()]
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in wanted:
        spec = Path(name) if name.endswith(".cnn") else SPECS / f"{name}.cnn"
        if not spec.exists():
            print(f"regen_golden: no spec {spec}", file=sys.stderr)
            return 2
        out = golden_path(spec)
        text = format_golden(golden_summary(spec))
        old = out.read_text() if out.exists() else None
        if old != text:
            out.write_text(text)
            print(f"{'updated' if old is not None else 'created'} {out.relative_to(ROOT)}")
    stale = {p.stem for p in GOLDEN.glob("*.json")} - {p.stem for p in spec_paths()}
    for name in sorted(stale):
        print(f"note: {GOLDEN.relative_to(ROOT)}/{name}.json has no spec in specs/; delete it if the spec is gone")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
