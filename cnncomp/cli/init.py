"""Write the seeded weights of a spec to a .safetensors file (or a .pt/.pth PyTorch state_dict),
keyed by layer weight names (LAYER.weight, LAYER.bias, LAYER.running_mean, LAYER.running_var),
as PyTorch names them."""

from cnncomp.cli.args import add_spec_arguments, parse_defines


def add_arguments(p):
    add_spec_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="W",
                   help="the file to write: .safetensors, or .pt/.pth (a PyTorch state_dict)")
    p.add_argument("--seed", type=int, default=0, help="initialization seed (default 0)")


def run(args) -> int:
    from cnncomp.pipeline import write_seeded_weights

    weights = write_seeded_weights(args.spec, args.output, parse_defines(args.defines), args.seed)
    print(f"wrote {args.output}: {len(weights)} tensors, {sum(w.size for w in weights.values()):,} values")
    return 0
