"""A Python-based Triton backend named `onnxruntime`: runs `model.onnx` with the onnxruntime package.

Triton maps `platform: "onnxruntime_onnx"` to the backend `onnxruntime`. Where the
backend folder holds `onnxruntime/model.py` instead of Triton's C++
`libtriton_onnxruntime.so`, Triton runs this file in a Python backend stub
process per model instance (`cnncomp serve` points Triton's --backend-directory
at a folder laid out that way). It stands in for the C++ backend on servers
built without it (the nvidia-pytriton wheel), and differs from it in what
docs/deploy.md lists: no config auto-complete, `optimization` settings ignored
(TensorRT and graph-level settings) except the CPU accelerator `openvino`, one
stub process per instance.

`cpu_execution_accelerator [ { name: "openvino" } ]` (`cnncomp deploy --runtime
openvino`) runs CPU instances with the openvino package on the same model.onnx,
at float32 precision as `cnncomp run --runtime openvino` does; without the
package the model fails to load, saying so, rather than quietly running on ONNX
Runtime.

This file runs inside Triton's Python stub, not inside cnncomp: it imports
only numpy, onnxruntime (or openvino) and Triton's own `triton_python_backend_utils`.
"""

import ctypes
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_TYPES = {  # Triton config data_type -> ONNX Runtime's type string, as the C++ backend compares them
    "TYPE_FP32": "tensor(float)", "TYPE_FP16": "tensor(float16)", "TYPE_FP64": "tensor(double)",
    "TYPE_BF16": "tensor(bfloat16)", "TYPE_INT64": "tensor(int64)", "TYPE_INT32": "tensor(int32)",
    "TYPE_INT8": "tensor(int8)", "TYPE_UINT8": "tensor(uint8)", "TYPE_BOOL": "tensor(bool)",
}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.max_batch = int(config.get("max_batch_size", 0))
        path = _model_file(args, config.get("default_model_filename") or "model.onnx")
        threads = _parameter(config, "intra_op_thread_count")
        if args.get("model_instance_kind") != "GPU" and "openvino" in _cpu_accelerators(config):
            self.session = OpenVinoSession(path, threads)
        else:
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = int(threads)
            providers = ["CPUExecutionProvider"]
            if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
            self.session = ort.InferenceSession(path, options, providers=providers)
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        _check_against_model(config, self.session, self.max_batch)

    def execute(self, requests):
        # Dynamic batching hands over several requests at once: run them as one batch, then split. Should the
        # batch fail, each request runs alone below, so that only a request at fault gets an error.
        if self.max_batch > 0 and len(requests) > 1:
            parts = [{n: _array(r, n) for n in self.inputs} for r in requests]
            feed = {n: np.concatenate([p[n] for p in parts]) for n in self.inputs}
            try:
                results = self.session.run(self.outputs, feed)
            except Exception:  # noqa: BLE001
                results = None
            if results is not None:
                sizes = np.cumsum([len(p[self.inputs[0]]) for p in parts])[:-1]
                split = [np.split(r, sizes) for r in results]
                return [pb_utils.InferenceResponse([_tensor(n, split[k][i]) for k, n in enumerate(self.outputs)])
                        for i in range(len(requests))]
        responses = []
        for r in requests:
            feed = {n: _array(r, n) for n in self.inputs}
            try:
                results = self.session.run(self.outputs, feed)
            except Exception as e:  # noqa: BLE001  an error answers its request; the model keeps serving
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
                continue
            responses.append(pb_utils.InferenceResponse([_tensor(n, v) for n, v in zip(self.outputs, results)]))
        return responses


# Tensors cross the stub through DLPack, not as_numpy()/Tensor(name, array): the stub's pybind11 numpy
# glue predates NumPy 2's dtype layout and yields empty buffers under NumPy 2.
def _array(request, name):
    return np.from_dlpack(pb_utils.get_input_tensor_by_name(request, name))


# The stub marks a consumed capsule "used_dlpack" where the DLPack protocol says "used_dltensor", so NumPy's
# capsule destructor would report an error on every response; naming it as the protocol says keeps the log
# clean (the stub frees the tensor itself either way).
_USED_CAPSULE = ctypes.c_char_p(b"used_dltensor")
_set_capsule_name = ctypes.pythonapi.PyCapsule_SetName
_set_capsule_name.argtypes = (ctypes.py_object, ctypes.c_char_p)


def _tensor(name, array):
    capsule = np.ascontiguousarray(array).__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    _set_capsule_name(capsule, _USED_CAPSULE)
    return tensor


def _model_file(args, filename):
    """The model file inside the model's version folder: a default_model_filename that leads out of it
    (`../../x.onnx`, an absolute path, a link to elsewhere) is refused, as the repository is trusted only
    that far (docs/deploy.md)."""
    folder = os.path.realpath(os.path.join(args["model_repository"], args["model_version"]))
    path = os.path.realpath(os.path.join(folder, filename))
    if os.path.commonpath([folder, path]) != folder or path == folder:
        raise pb_utils.TritonModelException(
            f"default_model_filename '{filename}' leads outside the model's folder {folder}; refusing to load it")
    return path


def _cpu_accelerators(config):
    """The names in optimization.execution_accelerators.cpu_execution_accelerator."""
    accelerators = config.get("optimization", {}).get("execution_accelerators", {})
    return [a.get("name") for a in accelerators.get("cpu_execution_accelerator", [])]


OPENVINO_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)", "bf16": "tensor(bfloat16)",
                  "i64": "tensor(int64)", "i32": "tensor(int32)", "i8": "tensor(int8)", "u8": "tensor(uint8)",
                  "boolean": "tensor(bool)"}


class _Port:
    """An OpenVINO model input or output, described as ONNX Runtime's NodeArg is (name, type, shape)."""

    def __init__(self, port):
        self.name = sorted(port.get_names())[0] if len(port.get_names()) == 1 else port.get_any_name()
        self.type = OPENVINO_TYPES.get(port.get_element_type().get_type_name(), "unknown")
        self.shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


class OpenVinoSession:
    """The model run by OpenVINO on the CPU with the calls of an onnxruntime.InferenceSession that this
    backend makes (get_inputs, get_outputs, run); inference precision f32, so that fp32 stays fp32."""

    def __init__(self, path, threads=None):
        try:
            import openvino as ov
        except ImportError:
            raise pb_utils.TritonModelException(
                "the config asks for the openvino CPU accelerator, but the openvino package is not installed "
                "where this server runs (pip install 'cnncomp[openvino]')") from None
        core = ov.Core()
        model = core.read_model(path)
        properties = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", properties)
        self.request = self.compiled.create_infer_request()
        self.inputs = [_Port(p) for p in model.inputs]  # names as read: compiling may merge names
        self.outputs = [_Port(p) for p in model.outputs]

    def get_inputs(self):
        return self.inputs

    def get_outputs(self):
        return self.outputs

    def run(self, names, feed):
        self.request.infer({i: feed[p.name] for i, p in enumerate(self.inputs)})
        index = {p.name: i for i, p in enumerate(self.outputs)}
        return [np.array(self.request.get_output_tensor(index[n]).data, copy=True) for n in names]


def _parameter(config, key):
    value = config.get("parameters", {}).get(key)
    return value.get("string_value") if value else None


def _check_against_model(config, session, max_batch):
    """Refuse a config that does not match the model, as Triton's C++ onnxruntime backend does."""
    problems = []
    for kind, declared, actual in (("input", config["input"], session.get_inputs()),
                                   ("output", config["output"], session.get_outputs())):
        by_name = {t.name: t for t in actual}
        if kind == "input":
            missing = sorted(set(by_name) - {t["name"] for t in declared})
            if missing:
                problems.append(f"the model's inputs {missing} are not in the configuration")
        for t in declared:
            model = by_name.get(t["name"])
            if model is None:
                problems.append(f"unexpected {kind} '{t['name']}', the model has {sorted(by_name)}")
                continue
            if ONNX_TYPES.get(t["data_type"]) != model.type:
                problems.append(f"{kind} '{t['name']}' is {t['data_type']} in the configuration, {model.type} in the model")
            dims = [d if isinstance(d, int) else -1 for d in model.shape]
            want = ([-1] if max_batch > 0 else []) + [int(d) for d in t["dims"]]
            if len(dims) != len(want) or any(m != -1 and m != w for m, w in zip(dims, want)):
                problems.append(f"{kind} '{t['name']}' has shape {dims} in the model but the configuration gives "
                                f"{want} (max_batch_size {max_batch})")
    if problems:
        raise pb_utils.TritonModelException("; ".join(problems))
