"""Compile a spec: run the passes (-O1 by default) and write the result.

--emit onnx (default) writes an ONNX model checked by onnx.checker (full check);
--emit cnn prints the graph after passes as a .cnn spec, so that a rewritten
architecture can be trained from scratch; --emit dot writes the graph after passes as
Graphviz DOT text (`cnncomp graph` draws it); --emit torch writes PyTorch source (one
nn.Module per block, state_dict keys = the weight names; a graph the passes rewrote is one
class, so use -O0 for the spec's blocks). --verify then runs the numeric check
(see `cnncomp verify --help` for how tolerances are chosen) and exits 1 on a mismatch.

--precision fp16 converts the weights and compute to float16 after the passes (which
run in float32/float64), warning about weights that overflow or lose precision;
--keep-io-fp32 keeps float32 inputs and outputs. --precision int8 quantizes the emitted model
to QDQ int8 (per-channel int8 weights, per-tensor activations), calibrated on --calibration
(.npz, .npy or an image folder with --preprocess; seeded inputs with a warning otherwise), keeping
the most sensitive layers in float32 until the outputs' relative L2 error on held-out samples is
within --max-error (with -O3 the rewrites get half of it); --stats prints the per-layer table.

--target tensorrt builds a serialized TensorRT engine (-o model.plan) with one optimization
profile over the batch dim (--min-batch/--opt-batch/--max-batch); with --precision int8, from
the QDQ model (explicit quantization, symmetric int8 activations). It needs the tensorrt
package and an NVIDIA GPU, and says what is missing otherwise.
"""

import sys

from cnncomp.cli._common import (
    add_check_arguments, add_compile_arguments, calibration, defines, int8_model, opt_level, passes_arg,
    session_options, tolerance, val_range,
)

EMITTERS = ("onnx", "cnn", "dot", "torch")


def add_arguments(p):
    add_compile_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the file to write")
    p.add_argument("--emit", choices=EMITTERS, default="onnx", help="what to write (default onnx)")
    p.add_argument("--verify", action="store_true", help="check the emitted model against the reference")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="fp16: float16 weights and compute, converted after the passes; int8: calibrated QDQ int8 "
                        "within --max-error (default fp32)")
    p.add_argument("--keep-io-fp32", action="store_true",
                   help="with --precision fp16: keep float32 inputs and outputs (Cast nodes inside the model)")
    p.add_argument("--target", choices=("onnx", "tensorrt"), default="onnx",
                   help="tensorrt: write a serialized TensorRT engine (.plan); needs tensorrt and an NVIDIA GPU")
    p.add_argument("--min-batch", type=int, default=1, metavar="B", help="with --target tensorrt (default 1)")
    p.add_argument("--opt-batch", type=int, metavar="B", help="with --target tensorrt (default --max-batch)")
    p.add_argument("--max-batch", type=int, default=8, metavar="B", help="with --target tensorrt (default 8)")
    add_check_arguments(p)


def _check_flags(args) -> None:
    from cnncomp.cli.args import UsageError

    if args.target == "tensorrt" and args.emit != "onnx":
        raise UsageError(f"--target tensorrt builds from the ONNX model; it cannot go with --emit {args.emit}")
    if args.keep_io_fp32 and args.precision != "fp16":
        raise UsageError("--keep-io-fp32 goes with --precision fp16")
    if args.precision in ("fp16", "int8") and args.emit != "onnx":
        raise UsageError(f"--precision {args.precision} converts the ONNX model; it cannot go with --emit {args.emit}")


def run(args) -> int:
    from cnncomp.fileio import write_text
    from cnncomp.pipeline import emit_model, optimize

    _check_flags(args)
    level = opt_level(args, default=0 if args.emit == "torch" else 1)  # torch source keeps the spec's blocks
    compiled = optimize(args.spec, defines(args), args.weights, args.seed, level, passes_arg(args),
                        max_error=args.max_error / 2 if args.precision == "int8" else args.max_error,  # int8 takes
                        autotune=args.autotune, provider=args.provider,  # the rest of the budget
                        calibration=calibration(args))
    for w in compiled.warnings + (compiled.fp16_warnings if args.precision == "fp16" else []):
        sys.stderr.write(f"warning: {w}\n")
    if args.stats:
        from cnncomp.passes import format_stats

        print(format_stats(compiled.records))
        for line in compiled.log:
            print(f"  {line}")
    if args.emit == "cnn":
        from cnncomp.ir.printer import emit_cnn

        text = emit_cnn(compiled.graph, header=f"{compiled.graph.name} after passes: "
                                              f"{', '.join(compiled.graph.meta.get('passes', [])) or 'none'}")
        write_text(args.output, text)
        print(f"wrote {args.output}")
        return 0
    if args.emit == "torch":
        from cnncomp.emit.torch.emit import emit_torch

        torch_notices: list[str] = []
        text = emit_torch(compiled.graph, notices=torch_notices)
        for n in torch_notices:
            sys.stderr.write(f"note: {n}\n")
        write_text(args.output, text)
        print(f"wrote {args.output}")
        return 0
    if args.emit == "dot":
        from cnncomp.emit.dot import to_dot

        write_text(args.output, to_dot(compiled.graph, title=f"{compiled.graph.name} after passes: "
                                       f"{', '.join(compiled.graph.meta.get('passes', [])) or 'none'}"))
        print(f"wrote {args.output}")
        return 0
    notices: list[str] = []
    model = emit_model(compiled, args.opset, notices)
    for n in notices:
        sys.stderr.write(f"note: {n}\n")
    inputs, opt_graph = None, compiled.graph
    if args.precision == "fp16":
        from cnncomp.precision.fp16 import convert_for_check
        from cnncomp.verification.harness import make_inputs

        if args.verify:
            inputs = make_inputs(compiled.ref_graph, args.seed, val_range(args.val_range), args.batch)
        model, inputs, opt_graph = convert_for_check(model, inputs, compiled.graph, args.provider if args.verify
                                                     else None, args.keep_io_fp32, sys.stderr.write)
    if args.precision == "int8":  # symmetric int8 activations for TensorRT, which takes no zero point
        model, int8 = int8_model(args, compiled, model, sys.stderr.write,
                                 "int8" if args.target == "tensorrt" else "uint8")
        inputs = int8.inputs  # verified on the held-out samples, not on noise the scales never saw
    engine_profile = None
    if args.target == "tensorrt":
        from cnncomp.deployment.tensorrt import engine_profile as prepare

        engine_profile = prepare(model, args.min_batch, args.opt_batch, args.max_batch)
    status = 0
    if args.verify:
        from cnncomp.verification.harness import verify

        report, _, _ = verify(compiled.ref_graph, compiled.ref_weights, model, opt_graph,
                              provider=args.provider, seed=args.seed, val_range=val_range(args.val_range),
                              batch=args.batch, atol=tolerance(args.atol, "--atol"), rtol=tolerance(args.rtol, "--rtol"),
                              max_error=args.max_error, precision=args.precision, inputs=inputs,
                              session_options=session_options(args))
        if args.precision == "fp16":
            from cnncomp.precision.fp16 import fp16_note

            report.notes.append(fp16_note(args.atol, args.rtol))
        print(report.format())
        status = 0 if report.ok else 1
    if status == 0 and engine_profile is not None:
        from cnncomp.deployment.tensorrt import write_engine

        size = write_engine(model, engine_profile, args.output, fp16=args.precision == "fp16",
                            int8=args.precision == "int8",
                            log=lambda line: sys.stderr.write(f"note: {line}\n"))
        print(f"wrote {args.output} (TensorRT engine, {size:,} bytes)")
    elif status == 0:
        from cnncomp.emit.onnx import save_onnx

        save_onnx(model, args.output)
        print(f"wrote {args.output}")
    else:
        sys.stderr.write(f"not writing {args.output}: the numeric check failed\n")
    return status
