"""Triton Inference Server model repositories.

`write_repository` writes

    REPO/<name>/config.pbtxt
    REPO/<name>/1/model.onnx      (and model.onnx.data beside it for models over 2 GB)

for Triton's ONNX Runtime backend (`platform: "onnxruntime_onnx"`). The config
declares every input and output with its data type (TYPE_FP32 or TYPE_FP16) and
dims. With `max_batch_size` > 0, Triton owns the first dim: the dims leave it out,
the model must keep it dynamic (the spec's symbolic `N`), and `dynamic_batching {}`
lets Triton gather requests into batches. A symbolic dim elsewhere is -1.
The instance kind is left to Triton (GPU where the server has one, else CPU)
unless given, so one repository loads on CPU and GPU servers. Before writing,
the config is checked against the model as Triton's C++ onnxruntime backend
checks it at load time (names, element types, dims with and without the batch
dim), so a repository Triton would refuse is never written.

With `tensorrt=True` the config asks the ONNX Runtime backend to run the model
through TensorRT (`optimization { execution_accelerators { gpu_execution_accelerator
[ { name: "tensorrt" ... } ] } }`), with precision_mode FP16, INT8 (a QDQ model) or FP32 and a 1 GiB
workspace. With `runtime="openvino"` it asks the backend to run CPU instances through
OpenVINO (`optimization { execution_accelerators { cpu_execution_accelerator [ { name:
"openvino" } ] } }`), and places the instances on the CPU, where that accelerator
applies; cnncomp's stand-in backend (triton_backend/onnxruntime/model.py) honours it
by running the model with the openvino package, at float32 precision as
`cnncomp run --runtime openvino` does.

The repository entry is written in a temporary folder beside the repository
(out of a watching server's view) and renamed into place, so that a failure
leaves no half-written model behind; an existing entry (a folder with a
config.pbtxt) is replaced as a whole. An interrupted deploy removes only what it
made: its temporary, and the folders it created while they are still empty
(SIGTERM and SIGHUP included; what a kill -9 leaves is removed by the next deploy).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from cnncomp.errors import CnnError, UsageError
from cnncomp.fileio import remove_stale_temporaries, removed_on_termination, temporary_name

TRITON_TYPES = {
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.FLOAT16: "TYPE_FP16",
    TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.BFLOAT16: "TYPE_BF16",
    TensorProto.INT64: "TYPE_INT64",
    TensorProto.INT32: "TYPE_INT32",
    TensorProto.INT8: "TYPE_INT8",
    TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.BOOL: "TYPE_BOOL",
}
WORKSPACE_BYTES = 1 << 30
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")  # matched whole (fullmatch: `$` allows a final newline)


def pbtxt_string(text: str) -> str:
    """A protobuf text-format string literal: quotes, backslashes and bytes that are not printable ASCII
    escaped, so that no name can end the string or the line."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


@dataclass
class TensorConfig:
    name: str
    data_type: str
    dims: list[int]


@dataclass
class TritonConfig:
    """The fields of a Triton model configuration that cnncomp writes."""

    name: str
    max_batch_size: int
    inputs: list[TensorConfig]
    outputs: list[TensorConfig]
    instances: int = 1
    kind: str | None = None  # None: Triton places instances (GPU where there is one, else CPU)
    tensorrt: bool = False
    precision: str = "fp32"
    workspace_bytes: int = WORKSPACE_BYTES
    cpu_accelerator: str | None = None  # CPU instances run through it (the backend's cpu_execution_accelerator)

    def to_pbtxt(self) -> str:
        """The config in protobuf text format (Triton's config.pbtxt)."""
        lines = [f"name: {pbtxt_string(self.name)}", 'platform: "onnxruntime_onnx"', f"max_batch_size: {self.max_batch_size}"]
        for key, tensors in (("input", self.inputs), ("output", self.outputs)):
            lines.append(f"{key} [")
            for i, t in enumerate(tensors):
                comma = "," if i < len(tensors) - 1 else ""
                lines += ["  {", f"    name: {pbtxt_string(t.name)}", f"    data_type: {t.data_type}",
                          f"    dims: [ {', '.join(str(d) for d in t.dims)} ]", "  }" + comma]
            lines.append("]")
        if self.max_batch_size > 0:
            lines.append("dynamic_batching { }")
        kind = [f"    kind: {self.kind}"] if self.kind else []
        lines += ["instance_group [", "  {", f"    count: {self.instances}", *kind, "  }", "]"]
        if self.tensorrt:
            from cnncomp.precision.convert import precision_of

            mode = precision_of(self.precision).triton_mode  # the precision registry's precision_mode
            lines += ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator : [",
                      "      {", '        name : "tensorrt"',
                      f'        parameters {{ key: "precision_mode" value: "{mode}" }}',
                      f'        parameters {{ key: "max_workspace_size_bytes" value: "{self.workspace_bytes}" }}',
                      "      }", "    ]", "  }", "}"]
        if self.cpu_accelerator:
            lines += ["optimization {", "  execution_accelerators {", "    cpu_execution_accelerator : [",
                      "      {", f'        name : "{self.cpu_accelerator}"', "      }", "    ]", "  }", "}"]
        return "\n".join(lines) + "\n"


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in vi.type.tensor_type.shape.dim]


def _fmt(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def triton_config(model: onnx.ModelProto, graph, max_batch: int = 8, instances: int = 1, kind: str | None = None,
                  tensorrt: bool = False, precision: str = "fp32", name: str | None = None,
                  runtime: str | None = None) -> TritonConfig:
    """The Triton config of an emitted model; a spec whose batch dim is static is an error when max_batch > 0.
    `runtime` (run/runtime.py): one with a Triton CPU accelerator (openvino) runs CPU instances through it."""
    name = name or graph.name
    if not MODEL_NAME.fullmatch(name):
        raise CnnError(f"{pbtxt_string(name)} cannot name a Triton model (use letters, digits, '_', '-', '.'); give --name")
    if max_batch < 0:
        raise CnnError(f"--max-batch must be 0 or more, got {max_batch}")
    if instances < 1:
        raise CnnError(f"--instances must be 1 or more, got {instances}")
    if kind not in (None, "gpu", "cpu"):
        raise CnnError(f"instance kind must be gpu or cpu, got '{kind}'")
    accelerator = None
    if runtime is not None:
        from cnncomp.run.runtime import choose

        accelerator = choose(runtime, quiet=True).triton_cpu_accelerator
    if accelerator and (tensorrt or kind == "gpu"):
        raise UsageError(f"--runtime {runtime} runs CPU instances; it cannot go with "
                         + ("--tensorrt" if tensorrt else "--kind gpu"))
    if tensorrt and kind == "cpu":
        raise CnnError("--tensorrt needs GPU instances: TensorRT runs only on NVIDIA GPUs (drop --kind cpu)")
    if tensorrt:
        kind = "gpu"  # a TensorRT accelerator only means something on a GPU instance
    if accelerator:
        kind = "cpu"  # a CPU accelerator applies to CPU instances only
    batch_symbol = None
    tensors: dict[str, list[TensorConfig]] = {"input": [], "output": []}
    for key, values in (("input", model.graph.input), ("output", model.graph.output)):
        for vi in values:
            elem = vi.type.tensor_type.elem_type
            if elem not in TRITON_TYPES:
                raise CnnError(f"{key} '{vi.name}' has ONNX element type {TensorProto.DataType.Name(elem)}, "
                               "which Triton cannot serve")
            dims = _dims(vi)
            if max_batch > 0:
                first = dims[0] if dims else None
                if not isinstance(first, str):
                    raise _static_batch_error(key, vi.name, dims, graph, max_batch)
                if batch_symbol is None:
                    batch_symbol = first
                elif first != batch_symbol:
                    raise CnnError(f"{key} '{vi.name}' {_fmt(dims)} has first dim '{first}', not the batch dim "
                                   f"'{batch_symbol}' of the other tensors; Triton batches along one dim "
                                   f"(deploy with --max-batch 0)")
                dims = dims[1:]
            tensors[key].append(TensorConfig(vi.name, TRITON_TYPES[elem],
                                             [d if isinstance(d, int) else -1 for d in dims]))
    return TritonConfig(name, max_batch, tensors["input"], tensors["output"], instances,
                        {None: None, "gpu": "KIND_GPU", "cpu": "KIND_CPU"}[kind], tensorrt, precision,
                        cpu_accelerator=accelerator)


def _static_batch_error(key: str, tensor: str, dims: list, graph, max_batch: int) -> CnnError:
    loc = None
    if key == "input" and tensor in graph.inputs:
        loc = graph.layer(tensor).loc
    elif key == "output" and tensor in graph.output_names:
        loc = graph.layer(graph.outputs[graph.output_names.index(tensor)]).loc
    shown = ", ".join(str(d) for d in dims[1:])
    hint = (f"declare it with a symbolic batch dim, e.g. `input {tensor}: [N, {shown}]`" if key == "input"
            else "make the batch dim symbolic all the way to the outputs")
    return CnnError(f"{key} '{tensor}' {_fmt(dims)} has a static batch dim, but --max-batch {max_batch} asks Triton "
                    f"to batch requests along it; {hint}, or deploy with --max-batch 0", loc)


def config_problems(config: TritonConfig, model: onnx.ModelProto) -> list[str]:
    """How a config disagrees with its ONNX model, checked as Triton's C++ onnxruntime backend checks at load:
    names, element types, and dims (the model's first dim dynamic and left out of the config when batching)."""
    initialized = {i.name for i in model.graph.initializer}
    problems = []
    for key, declared, values in (("input", config.inputs, model.graph.input), ("output", config.outputs,
                                                                                  model.graph.output)):
        actual = {vi.name: vi for vi in values if vi.name not in initialized}
        if key == "input":
            for name in actual:
                if name not in {t.name for t in declared}:
                    problems.append(f"the model's input '{name}' is missing from the config")
        for t in declared:
            vi = actual.get(t.name)
            if vi is None:
                problems.append(f"config {key} '{t.name}' is not a model {key} (the model has "
                                f"{', '.join(actual) or 'none'})")
                continue
            elem = vi.type.tensor_type.elem_type
            if TRITON_TYPES.get(elem) != t.data_type:
                problems.append(f"{key} '{t.name}' is {t.data_type} in the config but "
                                f"{TensorProto.DataType.Name(elem)} in the model")
            dims = [d if isinstance(d, int) else -1 for d in _dims(vi)]
            expected = ([-1] if config.max_batch_size > 0 else []) + list(t.dims)
            batch = (f" (max_batch_size {config.max_batch_size}: a dynamic batch dim, then the config's dims)"
                     if config.max_batch_size > 0 else "")
            if len(dims) != len(expected) or any(m != -1 and m != c for m, c in zip(dims, expected)):
                problems.append(f"{key} '{t.name}' has shape {dims} in the model but {expected} in the config{batch}")
    return problems


def _staging_folder(repo: Path) -> Path:
    """Where a model is written before it is renamed into the repository: beside the repository, out of
    the view of a server watching it (Triton loads every subfolder, hidden ones too), or inside it where
    the parent is another file system (a rename cannot cross one) or not writable."""
    parent = repo.resolve().parent
    try:
        if parent != repo.resolve() and parent.stat().st_dev == repo.stat().st_dev and os.access(parent, os.W_OK):
            return parent
    except OSError:
        pass
    return repo


def _staged_name(repo: Path, staging: Path, name: str) -> str:
    return name if staging == repo else f"{repo.resolve().name}.{name}"


def write_repository(model: onnx.ModelProto, config: TritonConfig, repo: str | Path, version: int = 1) -> Path:
    """Write REPO/<name>/config.pbtxt and REPO/<name>/<version>/model.onnx atomically; return the model folder."""
    from cnncomp.emit.onnx.save import save_onnx

    problems = config_problems(config, model)
    if problems:
        raise CnnError(f"the Triton config of '{config.name}' does not match its model, so Triton would refuse "
                       "to load it:\n  " + "\n  ".join(problems))
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise CnnError(f"the model repository '{repo}' exists and is not a folder")
    target = repo / config.name
    if target.exists() and not (target / "config.pbtxt").is_file() and any(target.iterdir()):
        raise CnnError(f"'{target}' exists and is not a Triton model folder (no config.pbtxt); "
                       "not replacing it")
    created = [p for p in (repo, *repo.parents) if not p.exists()]
    repo.mkdir(parents=True, exist_ok=True)
    staging = _staging_folder(repo)
    remove_stale_temporaries(staging, _staged_name(repo, staging, config.name))
    tmp = temporary_name(staging, _staged_name(repo, staging, config.name))
    old = None
    try:
        with removed_on_termination(tmp):
            (tmp / str(version)).mkdir(parents=True)
            save_onnx(model, tmp / str(version) / "model.onnx")
            (tmp / "config.pbtxt").write_text(config.to_pbtxt())
            if target.exists():
                old = staging / f".{_staged_name(repo, staging, config.name)}.{os.getpid()}.{secrets.token_hex(4)}.old"
                os.replace(target, old)
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not target.exists():
            os.replace(old, target)
        for folder in created:  # only folders this call made, and only while empty: never another's model
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
