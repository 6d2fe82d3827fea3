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
--precision int8 quantizes it (see `cnncomp compile --help`) and judges the outputs by their
relative L2 error against --max-error, on the calibration samples held out from calibration;
with --per-layer it also names the layer where the int8 error jumps most.
"""

import json
import sys

from cnncomp.cli._common import (
    add_check_arguments, add_compile_arguments, check_options, int8_options, load_npz, source,
)
from cnncomp.pipeline import PRECISIONS


def add_arguments(p):
    add_compile_arguments(p)
    add_check_arguments(p)
    p.add_argument("--per-layer", action="store_true", help="compare every layer and name the first that diverges")
    p.add_argument("--verify-each", action="store_true",
                   help="check after every pass (the -O3 rewrites included); name the first that breaks")
    p.add_argument("--save-inputs", metavar="NPZ", help="save the inputs used (npz)")
    p.add_argument("--load-inputs", metavar="NPZ",
                   help="use these inputs (.npz keyed by input name, or .npy for a one-input network)")
    p.add_argument("--save-outputs", metavar="NPZ", help="save ONNX Runtime's outputs (npz)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                   help="fp16: convert the model to float16 after the passes and judge it by the float16 "
                        "tolerances (atol = 1e-2 * max|ref|, rtol = 1e-2); int8: quantize it (see --calibration) "
                        "and judge it by the relative L2 error against --max-error")


def run(args) -> int:
    from cnncomp.pipeline import verify_spec

    options = check_options(args, per_layer=args.per_layer)
    inputs = load_npz(args.load_inputs) if args.load_inputs else None
    result = verify_spec(source(args), options, args.precision, inputs, args.verify_each, args.save_inputs,
                         args.save_outputs, log=sys.stderr.write, int8=int8_options(args, args.stats))
    report = result.report
    if args.stats and args.precision == "int8" and not args.json:
        print(result.details.table())
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(report.format())
        if args.per_layer and not report.first_divergent_layer:
            print(f"  all {len(report.layers)} compared layers agree")
    if not report.ok:
        sys.stderr.write("verify: the emitted model does not match the reference\n")
    return 0 if report.ok else 1
