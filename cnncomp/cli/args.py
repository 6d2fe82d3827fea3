"""Argument helpers shared by every command: usage errors, SPEC and -D."""

from __future__ import annotations

import argparse
import sys

from cnncomp.errors import UsageError  # noqa: F401  (re-exported: raised by commands for exit status 2)
from cnncomp.job import parse_defines  # noqa: F401  (re-exported: the one reader of -D, declared with the options)


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


def add_spec_argument(p: argparse.ArgumentParser) -> None:
    """SPEC alone (the job's declared options, -D among them, come from cnncomp.job.add_options)."""
    p.add_argument("spec", metavar="SPEC", help="the .cnn file")
