"""Per-layer table of a network: name, op, output shape, parameters, MACs (batch 1), receptive
field size and effective stride per spatial dim; totals; lint warnings with codes:

  gridding            stacked dilated convs that break the hybrid-dilated-convolution rule
  asymmetric-padding  p=same with an even effective kernel
  dropped-border      a stride that leaves input rows or columns unused
  redundant-bias      a conv or linear with bias feeding a batch norm
  dense-heavy         one linear layer holds more than half of the parameters
"""

import json

from cnncomp.cli.args import add_spec_arguments, parse_defines


def add_arguments(p):
    add_spec_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (keys as in the docs)")
    p.add_argument("--no-lint", action="store_true", help="leave out the lint warnings")
    p.add_argument("--shape", dest="shapes", action="append", default=[], metavar="NAME=1x3xHxW",
                   help="the table at this input shape: symbolic sizes and MACs become numbers (e.g. x=1x3x512x512)")


def run(args) -> int:
    from cnncomp.analysis.summary import format_table, summarize
    from cnncomp.api import load

    from cnncomp.job import parse_shape

    shape = {k: v for text in args.shapes for k, v in parse_shape(text).items()}
    summary = summarize(load(args.spec, parse_defines(args.defines), shape), with_lint=not args.no_lint)
    if args.json:
        print(json.dumps(summary.to_json(), indent=1))
    else:
        print(format_table(summary))
    return 0
