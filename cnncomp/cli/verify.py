"""Compile a spec and check numerically that the emitted model computes what the spec says.

The model runs under ONNX Runtime and the unoptimized graph runs in the PyTorch
reference (float64), on the same seeded inputs and weights. An output agrees when
every element satisfies |ort - ref| <= atol + rtol * |ref|. By default the
tolerance scales with the output's magnitude: atol = 1e-4 * max|ref| and
rtol = 1e-3 (float32), so a check means the same for logits near 1e3 as near 1.
Give --atol/--rtol once for every output or as OUTPUT=VALUE for one.

--per-layer compares every layer's output and names the first layer that
diverges, with its spec location. --verify-each runs the check after each pass
(with -O3, after each approximate rewrite the search keeps, judged by --max-error)
and names the first pass that broke agreement. Exit status 1 on a mismatch.

--precision fp16 converts the emitted model to float16 (weights and compute, after
the passes) and judges it by the float16 tolerances instead: atol = 1e-2 * max|ref|,
rtol = 1e-2; the report says so. The per-pass checks of --verify-each stay float32.
--precision int8 quantizes it (see `cnncomp compile --help`) and judges each output by its task
metric (--metric: top1 for class scores, relative L2 against --max-error for the others by default),
on the calibration samples held out from calibration; with --per-layer it also says which metric
judged each output and why, and names the layer where the int8 error jumps most.
"""

import json
import sys

from cnncomp.cli.args import add_spec_argument
from cnncomp.job import add_options, job_from_args


def add_arguments(p):
    add_spec_argument(p)
    add_options(p, "verify")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from cnncomp.pipeline import verify_job

    job = job_from_args("verify", args)
    result = verify_job(job, log=sys.stderr.write)
    report = result.report
    if job.optimize.stats and not args.json:
        table = precision_table(result, job.precision_name)
        if table:
            print(table)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(report.format())
        if job.check.per_layer and not report.first_divergent_layer:
            print(f"  all {len(report.layers)} compared layers agree")
    if not report.ok:
        sys.stderr.write("verify: the emitted model does not match the reference\n")
    return 0 if report.ok else 1


def precision_table(result, precision: str):
    from cnncomp.precision.convert import precision_of

    return precision_of(precision).stats(result.details)
