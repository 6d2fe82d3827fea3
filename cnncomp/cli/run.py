"""Run inference on an ONNX model, or on a spec (compiled in memory at -O1 with --weights or seeded
weights). Inputs: a .npy for a one-input model, or a .npz keyed by input name. Outputs go to -o
(.npy for one output, .npz for several), or a short description is printed.

A model with symbolic sizes (a spec with `input x: [N, 3, H, W]`) runs at any size its constraints
allow; --shape x=1x3x480x640 runs it on seeded inputs of that shape instead of --input."""

from cnncomp.cli.args import UsageError, add_shape_argument, parse_defines


def add_arguments(p):
    p.add_argument("model", metavar="MODEL_OR_SPEC", help="an .onnx model or a .cnn spec")
    p.add_argument("--input", metavar="X", help="input .npy (one input) or .npz (by name)")
    add_shape_argument(p, "instead of --input: seeded uniform inputs in [-1, 1) of this shape (one per input)")
    p.add_argument("-o", "--output", metavar="Y", help="write outputs here (.npy or .npz)")
    p.add_argument("--weights", metavar="W", help="with a spec: weights file (default: seeded)")
    p.add_argument("--seed", type=int, default=0, help="with a spec: initialization seed")
    p.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE",
                   help="with a spec: override a top-level let constant")
    p.add_argument("--provider", default="cpu", choices=("cpu", "cuda", "tensorrt", "auto"))


def run(args) -> int:
    from cnncomp.fileio import save_arrays
    from cnncomp.pipeline import infer

    if not args.model.endswith((".cnn", ".onnx")):
        raise UsageError(f"expected a .onnx model or a .cnn spec, got '{args.model}'")
    if (args.input is None) == (not args.shapes):
        raise UsageError("give the inputs with --input X.npy/.npz or their shape with --shape x=1x3xHxW (one of them)")
    inputs = args.input
    if args.shapes:
        inputs = {k: v for given in args.shapes for k, v in given.items()}
    outputs = infer(args.model, inputs, args.provider, parse_defines(args.defines), args.weights, args.seed,
                    shaped=bool(args.shapes))
    if args.output:
        save_arrays(args.output, outputs)
        print(f"wrote {args.output}")
    else:
        for name, value in outputs.items():
            print(f"{name}: shape {list(value.shape)}, dtype {value.dtype}, min {value.min():.6g}, "
                  f"max {value.max():.6g}, mean {value.mean():.6g}")
    return 0
