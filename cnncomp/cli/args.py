"""Argument helpers shared by every command: usage errors, SPEC and -D."""

from __future__ import annotations

import argparse
import re
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
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
            shown = item.encode("unicode_escape").decode("ascii")
            raise UsageError(f"-D takes NAME=VALUE with NAME a `let` constant's name, got '{shown}'")
        out[name.strip()] = value.strip()
    return out
