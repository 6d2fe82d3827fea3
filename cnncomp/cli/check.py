"""Parse and elaborate a spec. Prints `ok` and exits 0, or prints located errors and exits 1."""

from cnncomp.cli.args import add_spec_arguments, parse_defines


def add_arguments(p):
    add_spec_arguments(p)


def run(args) -> int:
    from cnncomp.api import load

    graph = load(args.spec, parse_defines(args.defines))
    print(f"ok: network {graph.name}, {len(graph) - len(graph.inputs)} layers")
    return 0
