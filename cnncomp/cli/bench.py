"""Measure every runtime x precision x batch side by side in one process, and say which is fastest
within the error budget.

A spec is compiled once (-O1 unless -O/--passes say otherwise); each precision is
converted once (fp16 and int8 by cnncomp; bf16 is the float32 model computed in
bfloat16 by OpenVINO's precision hint, on CPUs with AVX-512 BF16 or AMX); each
runtime opens its own session. Then --rounds rounds time every choice in turn
(--runs runs each, the order rotating from round to round), so a load that comes
and goes falls on all choices alike. The table gives each choice's median
milliseconds, its spread (+- half the range of the round medians), its speed-up
over float32 on ONNX Runtime's CPU provider at the same batch, its relative L2
output error against that baseline on the same inputs, its budget error and its
task metric per output. Each output is judged by --metric (int8's spelling;
auto: top1 decisions changed for class scores, with the few-samples estimate,
rel-l2 within --max-error for the others; with --labels, the accuracy lost); the
budget error is the worst output's metric over its bound, and the last lines name
the fastest choice whose budget error is <= 1 and the metrics that judged it.
--metric rel-l2 judges as bench did before task metrics.

With --calibration, int8 calibrates on those samples and every choice runs on
them (the first ones, repeated to fill a batch); without it, on seeded uniform
inputs (int8 then warns that its calibration is not representative). An ONNX
model is benched as it is, in fp32 and bf16 (fp16 and int8 convert the network's
graph: give the spec). A choice that cannot run here (a runtime not installed, a
CPU without bf16) is listed with the reason. Runtimes: cpu, cuda, tensorrt (ONNX
Runtime's providers) and openvino (pip install 'cnncomp[openvino]'). --plot writes
a bar chart (pip install 'cnncomp[plot]' for matplotlib).
"""

import json
import sys

from cnncomp.cli.args import UsageError
from cnncomp.job import add_options, job_from_args


def add_arguments(p):
    p.add_argument("spec", metavar="MODEL_OR_SPEC", help="a .cnn spec, or an .onnx model")
    add_options(p, "bench")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args) -> int:
    from cnncomp.pipeline import bench_job

    if not args.spec.endswith((".cnn", ".onnx")):
        raise UsageError(f"expected a .onnx model or a .cnn spec, got '{args.spec}'")
    job = job_from_args("bench", args)
    report = bench_job(job, log=sys.stderr.write)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(f"{report.network}: {report.rounds} rounds x {report.runs} runs, threads "
              f"{report.threads or 'default'}; speed-up and error against {' '.join(report.baseline)}")
        print(report.table())
        if job.output.plot:
            print(f"wrote {job.output.plot}")
    return 0
