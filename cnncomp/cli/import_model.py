"""Import an ONNX model (opset 11 or newer) as a .cnn spec plus its weights.

Writes OUTPUT (the spec) and, beside it, OUTPUT with .safetensors (or --weights-out),
keyed by the spec's layer names. Node patterns map back to layers (Conv -> conv,
Gemm -> linear, Clip(0, 6) -> relu6, Sigmoid*x -> silu, ...; see docs/import.md);
shape subgraphs feeding a Reshape are constant-folded first. Names are kept where
the exporter wrote PyTorch module paths (torch.onnx.export: /layer1/layer1.0/conv1/Conv
becomes layer1.0.conv1), so the weights keep PyTorch's names, and repeated identical
blocks are written once as a `block` used in a `repeat`. A model with an op outside the
language exits 1, lists every unsupported op type with its count and first node, and
writes nothing. The model's dynamic dims stay symbols named after its dim_params
(with `where H % 8 == 0` where a merge needs it); --input-shape pins them instead.
"""


from pathlib import Path

from cnncomp.job import add_options, job_from_args


def add_arguments(p):
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to import")
    p.add_argument("-o", "--output", required=True, metavar="NAME.cnn", help="the spec to write")
    p.add_argument("--weights-out", metavar="W", help="the weights file (default: NAME.safetensors beside the spec)")
    add_options(p, "import")


def run(args) -> int:
    from cnncomp.pipeline import import_onnx_model

    job = job_from_args("import", args)
    result = import_onnx_model(args.model, args.output, args.weights_out, job.source.input_shape)
    layers = sum(1 for layer in result.graph.layers() if layer.op != "input")
    values = sum(w.size for w in result.weights.values())
    lines = result.text.count("\n")
    weights = args.weights_out or str(Path(args.output).with_suffix(".safetensors"))
    print(f"wrote {args.output}: {layers} layers in {lines} lines; {weights}: {len(result.weights)} tensors, "
          f"{values:,} values")
    return 0
