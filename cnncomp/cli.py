"""The `cnncomp` command line: a thin layer over the Python API.

Exit status: 0 on success, 1 when the input is wrong (a spec error, a failed
numeric check), 2 on bad usage. A user error never shows a traceback unless
--debug is given.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cnncomp import __version__
from cnncomp.errors import CnnError

# Each command is a module in cnncomp/commands with add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "check": "parse and elaborate a spec; print errors or ok",
    "summary": "per-layer table: shapes, params, MACs, receptive fields; totals; lint warnings",
    "compile": "run the passes and write ONNX (or a .cnn spec); optionally verify",
    "verify": "compile and compare ONNX Runtime with the PyTorch reference",
    "run": "run inference on an ONNX model or a spec",
    "init": "write a spec's seeded weights to .safetensors",
    "deploy": "write a Triton Inference Server model repository (config.pbtxt and model.onnx)",
    "graph": "draw the layer graph (Graphviz), blocks as clusters",
}


class UsageError(Exception):
    """Bad usage of the command line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnncomp", description="Compile .cnn network specs to optimized, verified ONNX.")
    parser.add_argument("--version", action="version", version=f"cnncomp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"cnncomp.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except UsageError as e:
        sys.stderr.write(f"cnncomp {args.command}: error: {e}\n")
        return 2
    except CnnError as e:
        if args.debug:
            raise
        sys.stderr.write(str(e) + "\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
