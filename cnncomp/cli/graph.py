"""Draw a spec's layer graph with Graphviz: one box per layer (its op and arguments, output
shape and parameters), block calls as labeled clusters, merges as red ellipses.

The format follows -o: .svg, .png or .pdf (through Graphviz's `dot` program, which must be
installed), or .dot for the DOT text alone. By default the graph is drawn as the spec
writes it (-O0); -O1.. or --passes draws it after those passes (they need weights:
--weights, or seeded ones).
"""

from cnncomp.cli._common import add_compile_arguments, source


def add_arguments(p):
    add_compile_arguments(p)
    p.set_defaults(opt_level=0)
    p.add_argument("-o", "--output", required=True, metavar="PICTURE",
                   help="model.svg, .png, .pdf or .dot (- prints the DOT text)")
    p.add_argument("--rankdir", choices=("TB", "LR"), default="TB",
                   help="layout direction: TB top to bottom (default), LR left to right")
    p.add_argument("--title", help="the title above the picture (default: the network and its passes)")


def run(args) -> int:
    from cnncomp.pipeline import draw

    graph = draw(source(args, default_level=0), args.output, args.rankdir, args.title)
    layers = sum(1 for layer in graph.layers() if layer.op != "input")
    print(f"wrote {args.output}: {layers} layers")
    return 0
