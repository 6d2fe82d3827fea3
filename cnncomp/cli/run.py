"""Run inference on an ONNX model, or on a spec (compiled in memory at -O1 with --weights or seeded
weights). Inputs: a .npy for a one-input model, or a .npz keyed by input name. Outputs go to -o
(.npy for one output, .npz for several), or a short description is printed."""

from cnncomp.cli.args import UsageError
from cnncomp.inputs import read_inputs


def add_arguments(p):
    p.add_argument("model", metavar="MODEL_OR_SPEC", help="an .onnx model or a .cnn spec")
    p.add_argument("--input", required=True, metavar="X", help="input .npy (one input) or .npz (by name)")
    p.add_argument("-o", "--output", metavar="Y", help="write outputs here (.npy or .npz)")
    p.add_argument("--weights", metavar="W", help="with a spec: weights file (default: seeded)")
    p.add_argument("--seed", type=int, default=0, help="with a spec: initialization seed")
    p.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE",
                   help="with a spec: override a top-level let constant")
    p.add_argument("--provider", default="cpu", choices=("cpu", "cuda", "tensorrt", "auto"))


def run(args) -> int:
    from cnncomp.run.session import Session
    from cnncomp.fileio import save_arrays
    from cnncomp.cli.args import parse_defines

    if args.model.endswith(".cnn"):
        from cnncomp.pipeline import emit_model, optimize

        model = emit_model(optimize(args.model, parse_defines(args.defines), args.weights, args.seed))
    elif args.model.endswith(".onnx"):
        model = args.model
    else:
        raise UsageError(f"expected a .onnx model or a .cnn spec, got '{args.model}'")
    session = Session(model, args.provider)
    feeds = read_inputs(args.input, session.input_names, "--input")
    outputs = session.run(feeds)
    if args.output:
        save_arrays(args.output, outputs)
        print(f"wrote {args.output}")
    else:
        for name, value in outputs.items():
            print(f"{name}: shape {list(value.shape)}, dtype {value.dtype}, min {value.min():.6g}, "
                  f"max {value.max():.6g}, mean {value.mean():.6g}")
    return 0
