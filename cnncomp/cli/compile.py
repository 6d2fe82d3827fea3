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
the most sensitive layers in float32 until every output meets its task metric on held-out samples:
--metric (default auto: top1, decisions changed <= 1 point, for class scores; relative L2 within
--max-error for the other outputs; also max-abs, topK, iou(T), psnr, accuracy with --labels; e.g.
--metric logits=top1<=0.02,mask=iou(0.5)); with -O3 the rewrites get half of --max-error; --stats
prints each output's metric and why, and the per-layer table.

--target tensorrt builds a serialized TensorRT engine (-o model.plan) with one optimization
profile over the batch dim (--min-batch/--opt-batch/--max-batch); with --precision int8, from
the QDQ model (explicit quantization, symmetric int8 activations). It needs the tensorrt
package and an NVIDIA GPU, and says what is missing otherwise.
"""

import sys

from cnncomp.cli.args import add_spec_argument
from cnncomp.job import add_options, job_from_args


def add_arguments(p):
    add_spec_argument(p)
    add_options(p, "compile")


def run(args) -> int:
    from cnncomp.pipeline import compile_job

    job = job_from_args("compile", args)
    result = compile_job(job, log=sys.stderr.write)
    output = job.output.output
    if job.optimize.stats:
        from cnncomp.passes import format_stats

        print(format_stats(result.compiled.records))
        for line in result.compiled.log:
            print(f"  {line}")
        table = result.stats(job.precision_name)
        if table:
            print(table)
    if result.report is not None:
        print(result.report.format())
    if result.written is not None and result.written.kind == "tensorrt":
        print(f"wrote {output} (TensorRT engine, {result.written.size:,} bytes)")
    elif result.written is not None:
        print(f"wrote {output}")
    if result.report is not None and not result.report.ok:
        sys.stderr.write(f"not writing {output}: the numeric check failed\n")
        return 1
    return 0
