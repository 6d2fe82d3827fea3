"""Draw a spec's layer graph with Graphviz: one box per layer (its op and arguments, output
shape and parameters), block calls as labeled clusters, merges as red ellipses.

The format follows -o: .svg, .png or .pdf (through Graphviz's `dot` program, which must be
installed), or .dot for the DOT text alone. By default the graph is drawn as the spec
writes it (-O0); -O1.. or --passes draws it after those passes (they need weights:
--weights, or seeded ones).
"""

from cnncomp.cli._common import add_compile_arguments, defines, passes_arg


def add_arguments(p):
    add_compile_arguments(p)
    p.set_defaults(opt_level=0)
    p.add_argument("-o", "--output", required=True, metavar="PICTURE",
                   help="model.svg, .png, .pdf or .dot (- prints the DOT text)")
    p.add_argument("--rankdir", choices=("TB", "LR"), default="TB",
                   help="layout direction: TB top to bottom (default), LR left to right")
    p.add_argument("--title", help="the title above the picture (default: the network and its passes)")


def run(args) -> int:
    from pathlib import Path

    from cnncomp.emit.dot import dot_program, output_format, render, to_dot
    from cnncomp.errors import CnnError

    fmt = output_format(args.output)  # an unknown suffix is an error before any work
    if fmt is not None and dot_program() is None:
        raise CnnError(f"cannot draw '{args.output}': Graphviz's `dot` program is not installed (or not on PATH); "
                       "install Graphviz (apt-get install graphviz, brew install graphviz, conda install graphviz), "
                       "or write the DOT text with -o model.dot")
    folder = Path(args.output).parent
    if not folder.is_dir():
        raise CnnError(f"cannot write '{args.output}': the folder '{folder}' does not exist")
    passes = passes_arg(args)
    if args.opt_level == 0 and passes is None:
        from cnncomp.pipeline import load_graph

        graph, done = load_graph(args.spec, defines(args)), []
    else:
        from cnncomp.pipeline import optimize

        compiled = optimize(args.spec, defines(args), args.weights, args.seed, args.opt_level, passes,
                            max_error=args.max_error, autotune=args.autotune)
        graph, done = compiled.graph, [str(p) for p in compiled.graph.meta.get("passes", [])]
    title = args.title or (f"{graph.name} (passes: {', '.join(done)})" if done else graph.name)
    render(to_dot(graph, title=title, rankdir=args.rankdir), args.output)
    layers = sum(1 for layer in graph.layers() if layer.op != "input")
    print(f"wrote {args.output}: {layers} layers")
    return 0
