"""Draw a spec's layer graph with Graphviz: one box per layer (its op and arguments, output
shape and parameters), block calls as labeled clusters, merges as red ellipses.

The format follows -o: .svg, .png or .pdf (through Graphviz's `dot` program, which must be
installed), or .dot for the DOT text alone. By default the graph is drawn as the spec
writes it (-O0); -O1.. or --passes draws it after those passes (they need weights:
--weights, or seeded ones).
"""

from cnncomp.cli.args import add_spec_argument
from cnncomp.job import add_options, job_from_args


def add_arguments(p):
    add_spec_argument(p)
    add_options(p, "graph")


def run(args) -> int:
    from cnncomp.pipeline import draw_job

    job = job_from_args("graph", args)
    graph = draw_job(job)
    layers = sum(1 for layer in graph.layers() if layer.op != "input")
    print(f"wrote {job.output.output}: {layers} layers")
    return 0
