"""Write a Triton Inference Server model repository for a spec:

  REPO/<network>/config.pbtxt       platform onnxruntime_onnx, inputs and outputs with types and dims,
                                    dynamic batching, instance group, optional TensorRT or OpenVINO accelerator
  REPO/<network>/1/model.onnx       the compiled model (-O1 by default), batch dim kept dynamic

With --max-batch N > 0 (default 8) Triton batches requests along the first dim,
so the spec's inputs need a symbolic batch dim (`input x: [N, 3, 224, 224]`);
--max-batch 0 serves the shapes exactly as declared. --precision fp16 converts the
model to float16 after the passes (--keep-io-fp32 keeps float32 inputs and outputs);
--precision int8 writes the calibrated QDQ int8 model (see `cnncomp compile --help`).
--tensorrt asks Triton's ONNX Runtime backend to run the model through TensorRT
(precision_mode FP16 with --precision fp16, else FP32; 1 GiB workspace).
--runtime openvino asks it to run CPU instances through OpenVINO (the backend's
cpu_execution_accelerator), the runtime `cnncomp bench` may have found fastest here.

The model's folder is written under a temporary name and renamed into place, so a
failure leaves nothing half-written; an existing model folder is replaced.
Start a server with `cnncomp serve REPO` (or `tritonserver --model-repository=REPO`; see docs/deploy.md).
"""

import shlex
import sys

from cnncomp.cli.args import add_spec_argument
from cnncomp.job import add_options, job_from_args


def add_arguments(p):
    add_spec_argument(p)
    add_options(p, "deploy")


def run(args) -> int:
    from cnncomp.pipeline import deploy_job

    job = job_from_args("deploy", args)
    deployed = deploy_job(job, log=sys.stderr.write)
    folder, config, repo = deployed.folder, deployed.config, job.output.triton
    shown = ", ".join(f"{t.name} {t.data_type} {t.dims}" for t in config.inputs)
    print(f"wrote {folder}/config.pbtxt and {folder}/1/model.onnx: {config.name}, max_batch_size "
          f"{config.max_batch_size}, {deployed.precision}, {config.instances} x {config.kind or 'the kind Triton picks'}"
          + (", TensorRT accelerator" if config.tensorrt else "") + f"; inputs {shown}")
    repo = shlex.quote(str(repo))  # a line to paste: the path is one shell word
    print(f"serve it with: cnncomp serve {repo} (or tritonserver --model-repository={repo})")
    return 0
