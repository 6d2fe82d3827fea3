"""Measure every runtime x precision x batch side by side in one process, and say which is fastest
within the error budget.

A spec is compiled once (-O1 unless -O/--passes say otherwise); each precision is
converted once (fp16 and int8 by cnncomp; bf16 is the float32 model computed in
bfloat16 by OpenVINO's precision hint, on CPUs with AVX-512 BF16 or AMX); each
runtime opens its own session. Then --rounds rounds time every choice in turn
(--runs runs each, the order rotating from round to round), so a load that comes
and goes falls on all choices alike. The table gives each choice's median
milliseconds, its spread (+- half the range of the round medians), its speed-up
over float32 on ONNX Runtime's CPU provider at the same batch, and its relative L2
output error against that baseline on the same inputs; the last lines name the
fastest choice whose error is within --max-error (default 0.01).

With --calibration, int8 calibrates on those samples and every choice runs on
them (the first ones, repeated to fill a batch); without it, on seeded uniform
inputs (int8 then warns that its calibration is not representative).
A choice that cannot run here (a runtime not installed, a CPU without bf16) is
listed with the reason. Runtimes: cpu, cuda, tensorrt (ONNX Runtime's providers)
and openvino (pip install 'cnncomp[openvino]'). --plot writes a bar chart
(pip install 'cnncomp[plot]' for matplotlib).
"""

import json
import sys

from cnncomp.cli.args import UsageError


def _list(text: str, flag: str, known=None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(f"{flag} takes a comma-separated list, got '{text}'")
    for item in items:
        if known is not None and item not in known:
            raise UsageError(f"{flag}: unknown '{item}'; choose from {', '.join(known)}")
    return list(dict.fromkeys(items))


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(t) for t in _list(text, "--batch")]
    except ValueError:
        raise UsageError(f"--batch takes sizes like 1,8, got '{text}'") from None
    if any(s < 1 for s in sizes):
        raise UsageError(f"--batch takes sizes of 1 or more, got '{text}'")
    return sizes


def add_arguments(p):
    from cnncomp.cli._common import add_compile_arguments

    add_compile_arguments(p)
    for action in p._actions:  # the positional SPEC of the compile arguments also takes an ONNX model here
        if action.dest == "spec":
            action.metavar, action.help = "MODEL_OR_SPEC", "a .cnn spec or an .onnx model (fp32, fp16, bf16 only)"
    p.add_argument("--runtimes", default="cpu,openvino", metavar="R,...",
                   help="runtimes to compare: cpu, cuda, tensorrt, openvino (default cpu,openvino)")
    p.add_argument("--precisions", default="fp32,fp16,bf16,int8", metavar="P,...",
                   help="precisions to compare: fp32, fp16, bf16, int8 (default all four)")
    p.add_argument("--batch", default="1", metavar="B,...", help="batch sizes, e.g. 1,8 (default 1)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="threads per session (default 0: each runtime's own default)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    p.add_argument("--runs", type=int, default=10, help="runs of each choice per round (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--plot", metavar="OUT.png", help="also draw the speed-ups as a bar chart (.png, .svg, .pdf)")


def run(args) -> int:
    from cnncomp.cli._common import int8_options, source
    from cnncomp.pipeline import BENCH_PRECISIONS, bench_spec
    from cnncomp.run.bench import RUNTIMES, plot, plot_problem

    runtimes = _list(args.runtimes, "--runtimes", RUNTIMES)
    precisions = _list(args.precisions, "--precisions", BENCH_PRECISIONS)
    batches = _sizes(args.batch)
    if args.threads < 0:
        raise UsageError(f"--threads takes 0 or more, got {args.threads}")
    if not args.spec.endswith((".cnn", ".onnx")):
        raise UsageError(f"expected a .onnx model or a .cnn spec, got '{args.spec}'")
    if args.plot:
        problem = plot_problem(args.plot)
        if problem:
            raise UsageError(problem) if problem.startswith("--plot") else _missing(problem)
    args.precision = "int8"  # --calibration is int8's (an image folder included)
    report = bench_spec(args.spec, source(args) if args.spec.endswith(".cnn") else None, runtimes, precisions,
                        batches, args.threads, int8_options(args), args.max_error, args.rounds, args.runs,
                        log=sys.stderr.write)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(f"{report.network}: {report.rounds} rounds x {report.runs} runs, threads "
              f"{report.threads or 'default'}; speed-up and error against {' '.join(report.baseline)}")
        print(report.table())
    if args.plot:
        plot(report, args.plot)
        if not args.json:
            print(f"wrote {args.plot}")
    return 0


def _missing(problem: str):
    from cnncomp.errors import CnnError

    return CnnError(problem)
