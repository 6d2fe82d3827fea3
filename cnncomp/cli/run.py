"""Run inference on an ONNX model, or on a spec (compiled in memory at -O1 with --weights or seeded
weights). Inputs: a .npy for a one-input model, or a .npz keyed by input name. Outputs go to -o
(.npy for one output, .npz for several), or a short description is printed."""

from cnncomp.cli.args import UsageError
from cnncomp.job import add_options, job_from_args


def add_arguments(p):
    p.add_argument("model", metavar="MODEL_OR_SPEC", help="an .onnx model or a .cnn spec")
    p.add_argument("--input", required=True, metavar="X", help="input .npy (one input) or .npz (by name)")
    add_options(p, "run")


def run(args) -> int:
    from cnncomp.fileio import save_arrays
    from cnncomp.pipeline import infer

    if not args.model.endswith((".cnn", ".onnx")):
        raise UsageError(f"expected a .onnx model or a .cnn spec, got '{args.model}'")
    job = job_from_args("run", args)
    outputs = infer(args.model, args.input, job.check.runtime, job.source.defines, job.source.weights,
                    job.source.seed)
    if job.output.output:
        save_arrays(job.output.output, outputs)
        print(f"wrote {job.output.output}")
    else:
        for name, value in outputs.items():
            print(f"{name}: shape {list(value.shape)}, dtype {value.dtype}, min {value.min():.6g}, "
                  f"max {value.max():.6g}, mean {value.mean():.6g}")
    return 0
