"""Write a Triton Inference Server model repository for a spec:

  REPO/<network>/config.pbtxt       platform onnxruntime_onnx, inputs and outputs with types and dims,
                                    dynamic batching, instance group, optional TensorRT accelerator
  REPO/<network>/1/model.onnx       the compiled model (-O1 by default), batch dim kept dynamic

With --max-batch N > 0 (default 8) Triton batches requests along the first dim,
so the spec's inputs need a symbolic batch dim (`input x: [N, 3, 224, 224]`);
--max-batch 0 serves the shapes exactly as declared. --precision fp16 converts the
model to float16 after the passes (--keep-io-fp32 keeps float32 inputs and outputs);
--precision int8 writes the calibrated QDQ int8 model (see `cnncomp compile --help`).
--tensorrt asks Triton's ONNX Runtime backend to run the model through TensorRT
(precision_mode FP16 with --precision fp16, else FP32; 1 GiB workspace).

The model's folder is written under a temporary name and renamed into place, so a
failure leaves nothing half-written; an existing model folder is replaced.
Start a server with `cnncomp serve REPO` (or `tritonserver --model-repository=REPO`; see docs/deploy.md).
"""

import shlex
import sys

from cnncomp.cli._common import add_compile_arguments, int8_options, source
from cnncomp.pipeline import PRECISIONS


def add_arguments(p):
    add_compile_arguments(p)
    p.add_argument("--triton", required=True, metavar="REPO", help="the model repository folder (created if needed)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="Triton's max_batch_size: requests batched up to N along the batch dim; 0 turns "
                        "batching off (default 8)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                   help="fp16: float16 weights and compute, converted after the passes; int8: calibrated QDQ int8 "
                        "within --max-error, float32 inputs and outputs (default fp32)")
    p.add_argument("--keep-io-fp32", action="store_true",
                   help="with --precision fp16: keep float32 inputs and outputs (Cast nodes inside the model)")
    p.add_argument("--tensorrt", action="store_true",
                   help="run the model through TensorRT inside Triton (the ONNX Runtime backend's accelerator)")
    p.add_argument("--instances", type=int, default=1, metavar="K", help="model instances (default 1)")
    p.add_argument("--kind", choices=("gpu", "cpu"),
                   help="where instances run (default: left to Triton, GPU where the server has one, else CPU)")
    p.add_argument("--name", help="the model's name in Triton (default: the spec's network name)")


def run(args) -> int:
    from cnncomp.pipeline import deploy_spec

    deployed = deploy_spec(source(args), args.triton, args.max_batch, args.instances, args.kind, args.tensorrt,
                           args.precision, args.keep_io_fp32, args.name, log=sys.stderr.write, int8=int8_options(args))
    folder, config = deployed.folder, deployed.config
    shown = ", ".join(f"{t.name} {t.data_type} {t.dims}" for t in config.inputs)
    print(f"wrote {folder}/config.pbtxt and {folder}/1/model.onnx: {config.name}, max_batch_size "
          f"{config.max_batch_size}, {args.precision}, {config.instances} x {config.kind or 'the kind Triton picks'}"
          + (", TensorRT accelerator" if config.tensorrt else "") + f"; inputs {shown}")
    repo = shlex.quote(str(args.triton))  # a line to paste: the path is one shell word
    print(f"serve it with: cnncomp serve {repo} (or tritonserver --model-repository={repo})")
    return 0
