"""bf16: bfloat16 compute where the hardware has it, through the runtime that does it well.

bfloat16 keeps float32's exponent and 8 bits of mantissa, so a network computed
in it needs no calibration and no overflow guard; ResNet-50's outputs move by
about 0.3% (relative L2). The model file stays float32: what changes is how the
runtime computes it.

- OpenVINO (`--runtime openvino`): the float32 ONNX model with the inference
  precision hint `bf16`, on CPUs with AVX-512 BF16 or AMX (/proc/cpuinfo flags
  avx512_bf16 / amx_bf16, or BF16 in OpenVINO's OPTIMIZATION_CAPABILITIES).
- ONNX Runtime (cpu, cuda, tensorrt): refused. ONNX's Conv takes no bfloat16
  (opset 17 types it float16/float/double, so a bf16 Conv is an invalid model), and
  ONNX Runtime 1.32's CPU provider has no bfloat16 kernel for MatMul, Add or Relu
  either ("Could not find an implementation"): casting a model to bf16 gives
  nothing ONNX Runtime can run, let alone faster.

Its error is judged like int8's and -O3's: the outputs' relative L2 error
against the float64 reference within the budget (--max-error, default 0.01).
"""

from __future__ import annotations

from pathlib import Path

from cnncomp.errors import CnnError
from cnncomp.log import silent
from cnncomp.precision.convert import Converted, Precision, register_precision

CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of a CPU that computes bfloat16 natively
BF16_RUNTIMES = ("openvino",)
ORT_REASON = ("ONNX Runtime cannot compute bf16: ONNX's Conv takes no bfloat16 and its CPU provider has no "
              "bfloat16 MatMul/Add/Relu kernels; use --runtime openvino (pip install 'cnncomp[openvino]')")


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The bfloat16 flags (avx512_bf16, amx_bf16) this CPU lists in /proc/cpuinfo; [] where there is none."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return [f for f in CPU_FLAGS if f in flags]


def bf16_problem(runtime: str, cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """Why `runtime` on this machine cannot compute in bf16, or None when it can."""
    if runtime not in BF16_RUNTIMES:
        return ORT_REASON
    from cnncomp.run.openvino import cpu_capabilities, openvino_problem

    problem = openvino_problem()
    if problem:
        return problem
    if not cpu_bf16_flags(cpuinfo) and "BF16" not in cpu_capabilities():
        return ("this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo, no BF16 in "
                "OpenVINO's capabilities); bf16 would be emulated, slower than fp32")
    return None


BF16_NOTE = "bf16: the float32 model computed in bfloat16 by OpenVINO (inference precision hint bf16)"


def check_bf16(runtime: str) -> None:
    """A CnnError with the reason when `runtime` cannot compute bf16 on this machine."""
    problem = bf16_problem(runtime)
    if problem:
        raise CnnError(f"--precision bf16 under the {runtime} runtime: {problem}")


@register_precision
class Bf16(Precision):
    """bfloat16 compute of the float32 model, by the runtime's precision hint (see the module docstring)."""

    name = "bf16"
    help = "bfloat16 compute of the float32 model by --runtime openvino, on CPUs with AVX-512 BF16 or AMX"
    tolerances = (1e-2, 1e-2)  # only fill the report: bf16 is judged by the budget
    judged_by_budget = True
    converts_model = False  # the file stays float32: the runtime computes it in bf16
    triton_mode = "FP32"  # never written: a Triton deploy of bf16 is refused (ONNX Runtime computes no bf16)
    requires = ("a CPU with native bfloat16 (avx512_bf16 or amx_bf16)", "the openvino runtime")

    def convert(self, model, graph, request, log=silent):
        """The model as it is, once the runtime that will run it (the check's, else the job's --runtime) is
        known to compute bf16 here; else a CnnError with the reason."""
        if request.settings.get("triton"):  # deploy: Triton's backend, not cnncomp, picks how to compute
            raise CnnError("--precision bf16 cannot be deployed to Triton: its ONNX Runtime backend computes no "
                           "bf16, and its OpenVINO accelerator takes no precision setting; deploy fp32 with "
                           "--runtime openvino, or int8")
        check_bf16(request.probe_provider or request.settings.get("runtime") or "cpu")
        if request.inputs is None:  # a file is written, not checked: say what it holds
            log("note: bf16: the model file stays float32; OpenVINO computes it in bfloat16 when told so "
                "(INFERENCE_PRECISION_HINT bf16; in cnncomp: verify or bench with --runtime openvino)\n")
        return Converted(model, request.inputs, graph, "bf16", [BF16_NOTE])

    def for_timing(self):
        return None  # -O3 --autotune times layers under ONNX Runtime, which has no bf16: as float32

    def missing(self) -> list[str]:
        from cnncomp.run.openvino import cpu_capabilities

        if cpu_bf16_flags() or "BF16" in cpu_capabilities():
            return []
        return ["a CPU with native bfloat16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo)"]
