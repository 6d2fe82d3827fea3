"""Argument helpers shared by every command: usage errors, SPEC and -D."""

from __future__ import annotations

import argparse
import sys

from cnncomp.errors import UsageError  # noqa: F401  (re-exported: raised by commands for exit status 2)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 on usage errors; keep that, with our prefix
        self.print_usage(sys.stderr)
        sys.stderr.write(f"cnncomp: error: {message}\n")
        sys.exit(2)


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """SPEC and -D NAME=VALUE, shared by every command that reads a spec."""
    p.add_argument("spec", metavar="SPEC", help="the .cnn file")
    p.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE",
                   help="override a top-level `let` constant (repeatable), e.g. -D width=32")


def parse_defines(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise UsageError(f"-D takes NAME=VALUE, got '{item}'")
        out[name.strip()] = value.strip()
    return out


def parse_shape(text: str) -> dict:
    """`--shape x=1x3x512x512` (several inputs: `x=1x3x64x64,y=1x1x64x64`; one input: `1x3x512x512`)
    as {input name or None: (1, 3, 512, 512)}."""
    out = {}
    for item in text.split(","):
        name, eq, dims = item.strip().rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not shape or any(d < 1 for d in shape) or (eq and not name.strip()):
            raise UsageError(f"--shape takes NAME=DxDx... with positive dims (e.g. x=1x3x512x512), got '{text}'")
        out[name.strip() or None] = shape
    return out


def argument_type(parse):
    """`parse` as an argparse type: its UsageError becomes argparse's own usage error (exit 2)."""
    def convert(text: str):
        try:
            return parse(text)
        except UsageError as err:
            raise argparse.ArgumentTypeError(err.message) from None

    convert.__name__ = parse.__name__
    return convert


def add_shape_argument(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--shape", dest="shapes", action="append", default=[], metavar="NAME=1x3xHxW",
                   type=argument_type(parse_shape), help=help)


def parse_shape_range(text: str) -> dict:
    """`--shape-range x=1x3x256x256:1x3x512x512:4x3x1024x1024` (MIN:OPT:MAX; the name may be left out for
    a one-input model) as {input name or None: (min, opt, max)}."""
    name, eq, ranges = text.strip().rpartition("=")
    parts = ranges.split(":")
    if len(parts) != 3 or (eq and not name.strip()):
        raise UsageError(f"--shape-range takes NAME=MIN:OPT:MAX with shapes as 1x3x256x256, got '{text}'")
    shapes = tuple(next(iter(parse_shape(part).values())) for part in parts)
    return {name.strip() or None: shapes}
