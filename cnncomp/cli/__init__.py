"""The `cnncomp` command line: a thin layer over the Python API.

Exit status: 0 on success, 1 when the input is wrong (a spec error, a failed
numeric check), 2 on bad usage. A user error never shows a traceback unless
--debug is given.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from cnncomp.cli.args import UsageError, Parser, add_spec_arguments, parse_defines  # noqa: F401
from cnncomp.errors import CnnError
from cnncomp.version import __version__
from cnncomp.progress import silenced

# Each command is a module in cnncomp/cli with add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "check": "parse and elaborate a spec; print errors or ok",
    "summary": "per-layer table: shapes, params, MACs, receptive fields; totals; lint warnings",
    "compile": "run the passes and write ONNX (or a .cnn spec); optionally verify",
    "verify": "compile and compare ONNX Runtime with the PyTorch reference",
    "run": "run inference on an ONNX model or a spec",
    "init": "write a spec's seeded weights to .safetensors",
    "deploy": "write a Triton Inference Server model repository (config.pbtxt and model.onnx)",
    "graph": "draw the layer graph (Graphviz), blocks as clusters",
    "import": "an ONNX model back to a readable .cnn spec plus its weights (.safetensors)",
    "bench": "time every runtime x precision side by side; the fastest within the error budget",
    "serve": "run Triton Inference Server on 127.0.0.1 over a model repository until interrupted",
}
MODULE_OF = {"import": "import_model"}  # a command whose name is a Python keyword


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cnncomp", description="Compile .cnn network specs to optimized, verified ONNX.")
    parser.add_argument("--version", action="version", version=f"cnncomp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars on standard error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"cnncomp.cli.{MODULE_OF.get(name, name)}")
        p = sub.add_parser(name, help=help_text, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
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
        with guard_command_files(args), silenced(args.quiet):
            return args.run(args)
    except UsageError as e:
        sys.stderr.write(f"cnncomp {args.command}: error: {e.message}\n")
        return 2
    except CnnError as e:
        if args.debug:
            raise
        sys.stderr.write(str(e) + "\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:  # `cnncomp ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


INPUT_ARGS = ("spec", "model", "weights", "calibration", "load_inputs", "input")
OUTPUT_ARGS = ("output", "save_inputs", "save_outputs", "weights_out", "plot")
TEXT_EMITS = ("cnn", "torch", "dot")


@contextlib.contextmanager
def guard_command_files(args):
    """No output may overwrite an input, and every output path is checked before any work;
    with `-o -` the output alone goes to standard output (messages go to standard error)."""
    from cnncomp.fileio import STDOUT, check_output_path, guard_inputs, is_stdout, stdout_reserved_for_output

    inputs = [getattr(args, name, None) for name in INPUT_ARGS]
    outputs = [getattr(args, name, None) for name in OUTPUT_ARGS]
    output = str(getattr(args, "output", ""))
    text = getattr(args, "emit", None) in TEXT_EMITS or output.endswith(".dot") or \
        (args.command == "graph" and output == STDOUT)
    with guard_inputs([p for p in inputs if p]), contextlib.ExitStack() as stack:
        for path in filter(None, outputs):
            check_output_path(path, binary=not text)
        if any(is_stdout(path) for path in outputs if path):
            stack.enter_context(stdout_reserved_for_output())
        yield


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
