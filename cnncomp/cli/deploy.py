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
Start the server with `tritonserver --model-repository=REPO` (see docs/deploy.md).
"""

import sys

from cnncomp.cli._common import add_compile_arguments, calibration, defines, int8_model, opt_level, passes_arg


def add_arguments(p):
    add_compile_arguments(p)
    p.add_argument("--triton", required=True, metavar="REPO", help="the model repository folder (created if needed)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="Triton's max_batch_size: requests batched up to N along the batch dim; 0 turns "
                        "batching off (default 8)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="fp16: float16 weights and compute, converted after the passes; int8: calibrated QDQ int8 "
                        "within --max-error, float32 inputs and outputs (default fp32)")
    p.add_argument("--keep-io-fp32", action="store_true",
                   help="with --precision fp16: keep float32 inputs and outputs (Cast nodes inside the model)")
    p.add_argument("--tensorrt", action="store_true",
                   help="run the model through TensorRT inside Triton (the ONNX Runtime backend's accelerator)")
    p.add_argument("--instances", type=int, default=1, metavar="K", help="model instances (default 1)")
    p.add_argument("--kind", choices=("gpu", "cpu"), default="gpu", help="where instances run (default gpu)")
    p.add_argument("--name", help="the model's name in Triton (default: the spec's network name)")


def run(args) -> int:
    from cnncomp.cli.args import UsageError
    from cnncomp.pipeline import emit_model, optimize

    if args.keep_io_fp32 and args.precision != "fp16":
        raise UsageError("--keep-io-fp32 goes with --precision fp16")
    if args.max_batch < 0:
        raise UsageError(f"--max-batch takes 0 or more, got {args.max_batch}")
    if args.instances < 1:
        raise UsageError(f"--instances takes 1 or more, got {args.instances}")
    if args.tensorrt and args.kind == "cpu":
        raise UsageError("--tensorrt needs GPU instances (TensorRT runs only on NVIDIA GPUs); drop --kind cpu")
    from cnncomp.deployment.triton import triton_config, write_repository

    compiled = optimize(args.spec, defines(args), args.weights, args.seed, opt_level(args), passes_arg(args),
                        max_error=args.max_error, autotune=args.autotune, calibration=calibration(args))
    for w in compiled.warnings + (compiled.fp16_warnings if args.precision == "fp16" else []):
        sys.stderr.write(f"warning: {w}\n")
    notices: list[str] = []
    model = emit_model(compiled, args.opset, notices)
    for n in notices:
        sys.stderr.write(f"note: {n}\n")
    # the batch dims and names are checked on the float32 model, before anything is converted or written
    triton_config(model, compiled.graph, args.max_batch, args.instances, args.kind, args.tensorrt,
                  args.precision, args.name)
    if args.precision == "int8":  # TensorRT takes no zero point: symmetric int8 activations for it
        model, _ = int8_model(args, compiled, model, sys.stderr.write, "int8" if args.tensorrt else "uint8")
    if args.precision == "fp16":
        from cnncomp.precision.fp16 import log_report, to_fp16

        # CPU instances run on ONNX Runtime's CPU provider: keep in float32 what it has no float16 kernel for
        model, report = to_fp16(model, args.keep_io_fp32, probe_provider="cpu" if args.kind == "cpu" else None)
        log_report(report, sys.stderr.write)
    if args.tensorrt:
        from cnncomp.deployment.tensorrt import check_tensorrt_compatible

        for problem in check_tensorrt_compatible(model):
            sys.stderr.write(f"warning: TensorRT: {problem} (Triton's ONNX Runtime backend then runs those "
                             "nodes without TensorRT)\n")
    _check_loads(model)
    config = triton_config(model, compiled.graph, args.max_batch, args.instances, args.kind, args.tensorrt,
                           args.precision, args.name)
    try:
        folder = write_repository(model, config, args.triton)
    except OSError as e:
        from cnncomp.errors import CnnError

        raise CnnError(f"cannot write the model repository '{args.triton}': {e}") from None
    shown = ", ".join(f"{t.name} {t.data_type} {t.dims}" for t in config.inputs)
    print(f"wrote {folder}/config.pbtxt and {folder}/1/model.onnx: {config.name}, max_batch_size "
          f"{config.max_batch_size}, {args.precision}, {config.instances} x {config.kind}"
          + (", TensorRT accelerator" if config.tensorrt else "") + f"; inputs {shown}")
    print(f"serve it with: tritonserver --model-repository={args.triton}")
    return 0


def _check_loads(model) -> None:
    """ONNX Runtime (CPU) must load what Triton's ONNX Runtime backend will load."""
    from cnncomp.run.session import Session

    Session(model, "cpu", quiet=True)
