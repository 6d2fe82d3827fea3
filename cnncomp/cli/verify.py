"""Compile a spec and check numerically that the emitted model computes what the spec says.

The model runs under ONNX Runtime and the unoptimized graph runs in the PyTorch
reference (float64), on the same seeded inputs and weights. An output agrees when
every element satisfies |ort - ref| <= atol + rtol * |ref|. By default the
tolerance scales with the output's magnitude: atol = 1e-4 * max|ref| and
rtol = 1e-3 (float32), so a check means the same for logits near 1e3 as near 1.
Give --atol/--rtol once for every output or as OUTPUT=VALUE for one.

--per-layer compares every layer's output and names the first layer that
diverges, with its spec location. --verify-each runs the check after each pass
and names the first pass that broke agreement. Exit status 1 on a mismatch.

--precision fp16 converts the emitted model to float16 (weights and compute, after
the passes) and judges it by the float16 tolerances instead: atol = 1e-2 * max|ref|,
rtol = 1e-2; the report says so. The per-pass checks of --verify-each stay float32.
--precision int8 quantizes it (see `cnncomp compile --help`) and judges the outputs by their
relative L2 error against --max-error, on the calibration samples held out from calibration;
with --per-layer it also names the layer where the int8 error jumps most.
"""

import json
import sys

from cnncomp.cli._common import (
    add_check_arguments, add_compile_arguments, calibration, defines, int8_model, load_npz, opt_level, passes_arg,
    session_options, tolerance, val_range,
)


def add_arguments(p):
    add_compile_arguments(p)
    add_check_arguments(p)
    p.add_argument("--per-layer", action="store_true", help="compare every layer and name the first that diverges")
    p.add_argument("--verify-each", action="store_true", help="check after every pass; name the first that breaks")
    p.add_argument("--save-inputs", metavar="NPZ", help="save the inputs used (npz)")
    p.add_argument("--load-inputs", metavar="NPZ", help="use these inputs (npz, keyed by input name)")
    p.add_argument("--save-outputs", metavar="NPZ", help="save ONNX Runtime's outputs (npz)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="fp16: convert the model to float16 after the passes and judge it by the float16 "
                        "tolerances (atol = 1e-2 * max|ref|, rtol = 1e-2); int8: quantize it (see --calibration) "
                        "and judge it by the relative L2 error against --max-error")


def run(args) -> int:
    from cnncomp.verification.harness import make_inputs, verify
    from cnncomp.fileio import save_arrays
    from cnncomp.pipeline import emit_model, load_graph, optimize

    common = dict(provider=args.provider, seed=args.seed, val_range=val_range(args.val_range), batch=args.batch,
                  atol=tolerance(args.atol, "--atol"), rtol=tolerance(args.rtol, "--rtol"),
                  max_error=args.max_error, session_options=session_options(args))
    ref_graph = load_graph(args.spec, defines(args))
    inputs = load_npz(args.load_inputs) if args.load_inputs else \
        make_inputs(ref_graph, args.seed, common["val_range"], args.batch)
    broken: list[str] = []

    def check_after(step, ctx):
        if broken:
            return
        from cnncomp.emit.onnx import emit_onnx

        model = emit_onnx(ctx.graph, ctx.weights)
        report, _, _ = verify(ref_graph, compiled_ref_weights[0], model, ctx.graph, inputs=inputs, **common)
        if not report.ok:
            broken.append(str(step))

    compiled_ref_weights = []
    if args.verify_each:
        from cnncomp.pipeline import load_weights_for

        compiled_ref_weights.append(load_weights_for(ref_graph, args.weights, args.seed))
    compiled = optimize(ref_graph, None, compiled_ref_weights[0] if compiled_ref_weights else args.weights,
                        args.seed, opt_level(args), passes_arg(args), after_each=check_after if args.verify_each else None,
                        max_error=args.max_error / 2 if args.precision == "int8" else args.max_error,
                        autotune=args.autotune, provider=args.provider,
                        calibration=calibration(args))
    model = emit_model(compiled, args.opset)
    opt_graph = compiled.graph
    if args.precision == "int8":
        model, int8 = int8_model(args, compiled, model, sys.stderr.write)
        inputs = inputs if args.load_inputs else int8.inputs  # held out from calibration
    if args.precision == "fp16":
        from cnncomp.precision.fp16 import convert_for_check

        model, inputs, opt_graph = convert_for_check(model, inputs, compiled.graph, args.provider,
                                                     write=sys.stderr.write)
    report, feeds, outputs = verify(compiled.ref_graph, compiled.ref_weights, model, opt_graph, inputs=inputs,
                                    per_layer=args.per_layer, precision=args.precision, **common)
    if args.precision == "fp16":
        from cnncomp.precision.fp16 import fp16_note

        report.notes.append(fp16_note(args.atol, args.rtol))
    if args.precision == "int8" and args.per_layer:
        from cnncomp.precision.int8 import largest_error_jump

        jump = largest_error_jump(report.layers)
        if jump:
            report.notes.append(f"the int8 error jumps most at {jump[0]} ({compiled.ref_graph.layer(jump[0]).where}): "
                                f"relative L2 {jump[1]:.3g} before it, {jump[2]:.3g} after")
    if broken:
        report.ok = False
        report.notes.append(f"the first pass that broke agreement: {broken[0]}")
    if args.save_inputs:
        save_arrays(args.save_inputs, feeds)
    if args.save_outputs:
        save_arrays(args.save_outputs, outputs)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(report.format())
        if args.per_layer and not report.first_divergent_layer:
            print(f"  all {len(report.layers)} compared layers agree")
    if not report.ok:
        sys.stderr.write("verify: the emitted model does not match the reference\n")
    return 0 if report.ok else 1
