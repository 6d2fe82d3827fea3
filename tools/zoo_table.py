"""Run the zoo tier (torchvision and timm CNNs: export, import, compile, compare) and print its coverage table.

    python tools/zoo_table.py                     # every model; the markdown table on standard output
    python tools/zoo_table.py --only mixnet,tv:resnet --json zoo.json
    python tools/zoo_table.py --table tv.json timm.json   # the table of earlier runs (models of today's tier)

Needs torchvision and timm importable, or installed by `python tools/install_zoo.py` (see docs/import.md,
"The zoo tier"). Each model runs in this process, one after another, in a fresh temporary folder.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "zoo"))

import zoo  # noqa: E402


def blocking(error: str) -> str:
    """The refused op types of an import error ('ReduceMean, Split'), or the error's first line."""
    ops = re.findall(r"^  (\w+): \d+ nodes?, first", error, re.M)
    return ", ".join(ops) if ops else error.splitlines()[0][:120] if error else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated substrings of model names (tv:resnet18, timm:mixnet_s)")
    parser.add_argument("--json", help="write every result as JSON here")
    parser.add_argument("--table", nargs="+", help="print the table of these --json files instead of running")
    args = parser.parse_args(argv)
    tv, timm, why = zoo.load_zoo()
    if tv is None and timm is None:
        print(f"the zoo is not installed: {why}", file=sys.stderr)
        return 1
    models = zoo.zoo_models(tv, timm)
    if args.only:
        wanted = args.only.split(",")
        models = [m for m in models if any(w in m.name for w in wanted)]
    if args.table:
        tier = {m.name for m in models}
        earlier = [zoo.RoundTrip(**r) for f in args.table for r in json.loads(Path(f).read_text())]
        print_table([r for r in earlier if r.name in tier])
        return 0
    results = []
    for zm in models:
        with tempfile.TemporaryDirectory() as folder:
            r = zoo.round_trip(zm, Path(folder))
        results.append(r)
        status = "ok" if r.ok else f"skipped: {r.skipped}" if r.skipped else f"FAIL at {r.stage}: {blocking(r.error)}"
        print(f"{r.name}: {status} ({r.seconds:.1f} s)", file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps([vars(x) for x in results], indent=1, default=str))
    print_table(results)
    return 0


def print_table(results: list) -> None:
    skipped = [r for r in results if r.skipped]
    results = [r for r in results if not r.skipped]
    ok = sum(r.ok for r in results)
    print(f"| model | result | spec lines | relative error (bound) |\n| --- | --- | --- | --- |")
    for r in results:
        result = "imported, matches" if r.ok else (f"refused: {blocking(r.error)}" if r.stage == "import"
                                                  else f"{r.stage}: {r.error.splitlines()[0][:100] if r.error else ''}")
        err = f"{r.rel_err:.1e} ({r.bound:.0e})" if r.rel_err == r.rel_err else ""
        print(f"| {r.name} | {result} | {r.spec_lines or ''} | {err} |")
    print(f"\n{ok} of {len(results)} round-trip ({100 * ok / max(1, len(results)):.1f}%).")
    if skipped:
        print("Left out: " + ", ".join(f"{r.name} ({r.skipped})" for r in skipped) + ".")


if __name__ == "__main__":
    sys.exit(main())
