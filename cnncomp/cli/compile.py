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

from cnncomp.cli._common import add_check_arguments, add_compile_arguments, check_options, int8_options, source
from cnncomp.cli.args import argument_type, parse_shape_range
from cnncomp.pipeline import EMITTERS, PRECISIONS, TARGETS


def add_arguments(p):
    add_compile_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the file to write; - writes text (--emit cnn/torch/dot) to standard output")
    p.add_argument("--emit", choices=EMITTERS, default="onnx", help="what to write (default onnx)")
    p.add_argument("--verify", action="store_true", help="check the emitted model against the reference")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                   help="fp16: float16 weights and compute, converted after the passes; int8: calibrated QDQ int8 "
                        "within --max-error (default fp32)")
    p.add_argument("--keep-io-fp32", action="store_true",
                   help="with --precision fp16: keep float32 inputs and outputs (Cast nodes inside the model)")
    p.add_argument("--target", choices=TARGETS, default="onnx",
                   help="tensorrt: write a serialized TensorRT engine (.plan); needs tensorrt and an NVIDIA GPU")
    p.add_argument("--min-batch", type=int, default=1, metavar="B", help="with --target tensorrt (default 1)")
    p.add_argument("--opt-batch", type=int, metavar="B", help="with --target tensorrt (default --max-batch)")
    p.add_argument("--max-batch", type=int, default=8, metavar="B", help="with --target tensorrt (default 8)")
    p.add_argument("--shape-range", dest="shape_ranges", action="append", default=[], type=argument_type(parse_shape_range),
                   metavar="NAME=MIN:OPT:MAX",
                   help="with --target tensorrt: the engine's optimization profile for an input with symbolic "
                        "sizes, shapes as 1x3x256x256 (repeatable, one per input)")
    add_check_arguments(p)


def run(args) -> int:
    from cnncomp.pipeline import compile_spec

    default_level = 0 if args.emit == "torch" else 1  # torch source keeps the spec's blocks
    result = compile_spec(source(args, default_level), args.output, args.emit, args.precision, args.keep_io_fp32,
                          args.target, (args.min_batch, args.opt_batch, args.max_batch,
                                        {k: v for r in args.shape_ranges for k, v in r.items()}), args.verify,
                          check_options(args), log=sys.stderr.write, int8=int8_options(args, args.stats))
    if args.stats:
        from cnncomp.passes import format_stats

        print(format_stats(result.compiled.records))
        for line in result.compiled.log:
            print(f"  {line}")
        if args.precision == "int8":
            print(result.details.table())
    if result.report is not None:
        print(result.report.format())
    if result.written is not None and result.written.kind == "tensorrt":
        print(f"wrote {args.output} (TensorRT engine, {result.written.size:,} bytes)")
    elif result.written is not None:
        print(f"wrote {args.output}")
    if result.report is not None and not result.report.ok:
        sys.stderr.write(f"not writing {args.output}: the numeric check failed\n")
        return 1
    return 0
