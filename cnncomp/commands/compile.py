"""Compile a spec: run the passes (-O1 by default) and write the result.

--emit onnx (default) writes an ONNX model checked by onnx.checker (full check);
--emit cnn prints the graph after passes as a .cnn spec, so that a rewritten
architecture can be trained from scratch. --verify then runs the numeric check
(see `cnncomp verify --help` for how tolerances are chosen) and exits 1 on a mismatch.
"""

import sys

from cnncomp.commands._common import (
    add_check_arguments, add_compile_arguments, calibration, defines, passes_arg, tolerance, val_range,
)

EMITTERS = ("onnx", "cnn")


def add_arguments(p):
    add_compile_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the file to write")
    p.add_argument("--emit", choices=EMITTERS, default="onnx", help="what to write (default onnx)")
    p.add_argument("--verify", action="store_true", help="check the emitted model against the reference")
    add_check_arguments(p)


def run(args) -> int:
    from cnncomp.fileio import write_text
    from cnncomp.compiler import emit_model, optimize

    compiled = optimize(args.spec, defines(args), args.weights, args.seed, args.opt_level, passes_arg(args),
                        max_error=args.max_error, autotune=args.autotune, provider=args.provider,
                        calibration=calibration(args))
    for w in compiled.warnings:
        sys.stderr.write(f"warning: {w}\n")
    if args.stats:
        from cnncomp.passes import format_stats

        print(format_stats(compiled.records))
        for line in compiled.log:
            print(f"  {line}")
    if args.emit == "cnn":
        from cnncomp.backends.cnn_emit import emit_cnn

        text = emit_cnn(compiled.graph, header=f"{compiled.graph.name} after passes: "
                                              f"{', '.join(compiled.graph.meta.get('passes', [])) or 'none'}")
        write_text(args.output, text)
        print(f"wrote {args.output}")
        return 0
    notices: list[str] = []
    model = emit_model(compiled, args.opset, notices)
    for n in notices:
        sys.stderr.write(f"note: {n}\n")
    status = 0
    if args.verify:
        from cnncomp.backends.verify import verify

        report, _, _ = verify(compiled.ref_graph, compiled.ref_weights, model, compiled.graph,
                              provider=args.provider, seed=args.seed, val_range=val_range(args.val_range),
                              batch=args.batch, atol=tolerance(args.atol, "--atol"), rtol=tolerance(args.rtol, "--rtol"),
                              max_error=args.max_error)
        print(report.format())
        status = 0 if report.ok else 1
    if status == 0:
        from cnncomp.backends.onnx_emit import save_onnx

        save_onnx(model, args.output)
        print(f"wrote {args.output}")
    else:
        sys.stderr.write(f"not writing {args.output}: the numeric check failed\n")
    return status
