"""TensorRT: check that an emitted ONNX model suits TensorRT's ONNX parser, and build engines.

`check_tensorrt_compatible(model)` needs neither TensorRT nor a GPU: it lists,
in words, what TensorRT 10's ONNX parser (onnx-tensorrt) would refuse in the
model, from its operator support matrix (onnx-tensorrt docs/operators.md):

- the opset: TensorRT 10.0 reads opsets 9 to 20 (later 10.x releases read up
  to 24), so 9..20 is what every TensorRT 10 accepts; cnncomp emits 17, or 19
  where DeformConv needs it;
- operators outside the support matrix, and the restrictions that our
  lowerings can run into: pooling only in 2D or 3D and without dilation,
  DeformConv (parsed since TensorRT 10.1) only with 1 or 2 spatial dims and
  symmetric pads, TopK sorted with a constant K below 3840, Resize only in
  nearest/linear modes without antialiasing;
- float64 tensors (TensorRT has no float64 network tensors; the parser would
  clamp weights to float32 and refuses float64 inputs and outputs);
- a dynamic channel dim (convolutions need a static channel count).

`build_engine` builds a serialized engine with the TensorRT 10 Python API
(Builder, OnnxParser, BuilderConfig with a workspace limit, FP16, one
optimization profile over the batch dim). It needs the `tensorrt` package and
an NVIDIA GPU; `tensorrt_missing()` says in words what is missing.
"""

from __future__ import annotations

import ctypes
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from cnncomp.errors import CnnError
from cnncomp.onnx_graph import attrs_of

TRT_OPSETS = (9, 20)  # what TensorRT 10.0's ONNX parser reads; 10.15 reads up to 24
DEFORM_CONV_SINCE = (10, 1)
TOPK_MAX_K = 3840
WORKSPACE_BYTES = 1 << 30

# Operators marked supported in TensorRT 10's ONNX operator support matrix (onnx-tensorrt docs/operators.md);
# a superset of what cnncomp's lowerings emit.
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization BlackmanWindow Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND
Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool
Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus
Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape
Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


def _where(node: onnx.NodeProto) -> str:
    return f"node '{node.name or node.output[0]}'" + (f" ({node.doc_string})" if node.doc_string else "")


def check_tensorrt_compatible(model: onnx.ModelProto, trt_version: tuple[int, int] | None = None) -> list[str]:
    """What TensorRT 10's ONNX parser would refuse in this model, one line each (empty: nothing found)."""
    problems: list[str] = []
    g = model.graph
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    opset = opsets.get("ai.onnx", opsets.get("", 0))
    lo, hi = TRT_OPSETS
    if not lo <= opset <= hi:
        problems.append(f"opset {opset} is outside {lo}..{hi}, the opsets TensorRT 10's ONNX parser reads "
                        f"(compile with --opset 17)")
    for domain in opsets:
        if domain not in ("ai.onnx", ""):
            problems.append(f"operator domain '{domain}' is not ai.onnx; TensorRT would need a plugin for its ops")
    inits = {t.name: t for t in g.initializer}
    constants = set(inits) | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    # float64 anywhere
    for vi in list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type == TensorProto.DOUBLE:
            kind = "input" if any(vi is i for i in g.input) else "output"
            problems.append(f"{kind} '{vi.name}' is float64; TensorRT has no float64 tensors (use float32)")
    doubles = [t.name for t in g.initializer if t.data_type == TensorProto.DOUBLE]
    if doubles:
        problems.append(f"{len(doubles)} float64 weight(s) ({', '.join(doubles[:3])}{', ...' if len(doubles) > 3 else ''}); "
                        "TensorRT casts them to float32, clamping to +-FLT_MAX (use float32)")
    # dynamic channel dims
    for vi in g.input:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) >= 3 and not dims[1].HasField("dim_value"):
            problems.append(f"input '{vi.name}' has a dynamic channel dim ('{dims[1].dim_param or '?'}'); "
                            "TensorRT's convolutions need a static channel count")
    # operators
    seen_unsupported: dict[str, int] = {}
    for node in g.node:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            continue
        if op not in SUPPORTED_OPS:
            seen_unsupported[op] = seen_unsupported.get(op, 0) + 1
            continue
        problems += _restrictions(node, constants, inits, trt_version)
    for op, count in seen_unsupported.items():
        problems.append(f"op {op} ({count} node(s)) is not in TensorRT 10's ONNX operator support matrix")
    return problems


def _restrictions(node: onnx.NodeProto, constants: set, inits: dict, trt_version) -> list[str]:
    op, out, attrs = node.op_type, [], attrs_of(node)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = attrs.get("kernel_shape", [])
        if op != "LpPool" and len(kernel) not in (2, 3):
            out.append(f"{op} {_where(node)} pools over {len(kernel)} spatial dim(s); TensorRT pools in 2D or 3D only")
        dil = attrs.get("dilations", [])
        if dil and any(d != 1 for d in dil):
            out.append(f"{op} {_where(node)} has dilations {list(dil)}; TensorRT needs them all 1")
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            out.append(f"MaxPool {_where(node)} outputs indices, which TensorRT does not support")
    elif op == "DeformConv":
        if trt_version is not None and tuple(trt_version) < DEFORM_CONV_SINCE:
            out.append(f"DeformConv {_where(node)} needs TensorRT 10.1 or newer (this is "
                       f"{'.'.join(map(str, trt_version))})")
        kernel = attrs.get("kernel_shape", [])
        if kernel and len(kernel) not in (1, 2):
            out.append(f"DeformConv {_where(node)} has {len(kernel)} spatial dims; TensorRT takes 1 or 2")
        pads = list(attrs.get("pads", []) or [])
        half = len(pads) // 2
        if pads and pads[:half] != pads[half:]:
            out.append(f"DeformConv {_where(node)} has asymmetric pads {pads}; TensorRT needs begin == end")
    elif op == "TopK":
        if attrs.get("sorted", 1) != 1:
            out.append(f"TopK {_where(node)} has sorted=0; TensorRT needs sorted=1")
        k = node.input[1] if len(node.input) > 1 else ""
        if k and k not in constants:
            out.append(f"TopK {_where(node)} takes K from a tensor computed at run time; TensorRT needs a constant")
        elif k in inits:
            value = int(np.asarray(numpy_helper.to_array(inits[k])).reshape(-1)[0])
            if value >= TOPK_MAX_K:
                out.append(f"TopK {_where(node)} has K = {value}; TensorRT needs K < {TOPK_MAX_K}")
    elif op == "Resize":
        mode = attrs.get("mode", "nearest")
        coord = attrs.get("coordinate_transformation_mode", "half_pixel")
        nearest = attrs.get("nearest_mode", "round_prefer_floor")
        if mode not in RESIZE_MODES:
            out.append(f"Resize {_where(node)} uses mode '{mode}'; TensorRT supports {', '.join(sorted(RESIZE_MODES))}")
        if coord not in RESIZE_COORDS:
            out.append(f"Resize {_where(node)} uses coordinate_transformation_mode '{coord}', which TensorRT lacks")
        if mode == "nearest" and nearest not in RESIZE_NEAREST:
            out.append(f"Resize {_where(node)} uses nearest_mode '{nearest}', which TensorRT lacks")
        if attrs.get("antialias", 0):
            out.append(f"Resize {_where(node)} antialiases; TensorRT does not")
    return out


# ---- building engines --------------------------------------------------------------


def _cuda_devices() -> tuple[int, str | None]:
    """The number of CUDA devices the driver sees, and why none when 0."""
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
            break
        except OSError:
            continue
    else:
        return 0, "no NVIDIA driver (libcuda) is installed"
    if cuda.cuInit(0) != 0:
        return 0, "the NVIDIA driver found no usable GPU (cuInit failed)"
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return 0, "the NVIDIA driver sees no GPU"
    return count.value, None


def _import_tensorrt():
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        return None
    except Exception:  # a broken install (missing CUDA libraries) raises other errors on import
        return None
    return trt


def tensorrt_missing() -> list[str]:
    """What is missing to build a TensorRT engine here, in words (empty: nothing)."""
    missing = []
    if _import_tensorrt() is None:
        missing.append("the TensorRT Python package is not installed (pip install tensorrt, or "
                       "pip install 'cnncomp[tensorrt]')")
    count, why = _cuda_devices()
    if count == 0:
        missing.append(f"no NVIDIA GPU: {why}")
    return missing


@dataclass
class Profile:
    """One optimization profile: min/opt/max shapes per input."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def profile_shapes(model: onnx.ModelProto, min_batch: int = 1, opt_batch: int | None = None,
                   max_batch: int = 8, ranges: dict | None = None) -> Profile:
    """min/opt/max shapes of every input: the batch dim (symbolic first dim) varies, the others are fixed;
    an input with symbolic sizes after the batch (height, width) takes its shapes from `ranges`
    ({"x": ((1, 3, 256, 256), (1, 3, 512, 512), (4, 3, 1024, 1024))}: --shape-range x=MIN:OPT:MAX)."""
    opt_batch = opt_batch if opt_batch is not None else max_batch
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise CnnError(f"the batch sizes need 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                       f"{min_batch}, {opt_batch}, {max_batch}")
    ranges = dict(ranges or {})
    names = [vi.name for vi in model.graph.input]
    if None in ranges:
        if len(names) != 1:
            raise CnnError(f"--shape-range: the model has {len(names)} inputs ({', '.join(names)}); name each")
        ranges = {names[0]: ranges.pop(None), **ranges}
    unknown = sorted(set(ranges) - set(names))
    if unknown:
        raise CnnError(f"--shape-range {unknown[0]}=...: the model has no input '{unknown[0]}' "
                       f"(its inputs: {', '.join(names)})")
    shapes = {}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name in ranges:
            shapes[vi.name] = _ranged_shapes(vi.name, dims, ranges[vi.name])
            continue
        fixed = []
        for i, d in enumerate(dims):
            if d.HasField("dim_value"):
                fixed.append(d.dim_value)
            elif i == 0:
                fixed.append(None)
            else:
                example = "x".join(str(e.dim_value) if e.HasField("dim_value") else "1" if j == 0 else "512"
                                   for j, e in enumerate(dims))
                raise CnnError(f"input '{vi.name}' has a dynamic dim '{d.dim_param or '?'}' at position {i}; "
                               f"give the engine's range of shapes with --shape-range {vi.name}=MIN:OPT:MAX "
                               f"(e.g. {vi.name}={example}:{example}:{example}), or make the dim static")
        if fixed and fixed[0] is None:
            shapes[vi.name] = tuple(tuple([b] + fixed[1:]) for b in (min_batch, opt_batch, max_batch))
        else:
            shape = tuple(fixed)
            shapes[vi.name] = (shape, shape, shape)
    return Profile(shapes)


def _ranged_shapes(name: str, dims, given) -> tuple:
    """(min, opt, max) of one input from --shape-range, checked against the model's dims."""
    low, opt, high = (tuple(int(v) for v in shape) for shape in given)
    for shape in (low, opt, high):
        if len(shape) != len(dims):
            raise CnnError(f"--shape-range {name}: {'x'.join(map(str, shape))} has rank {len(shape)}, the input "
                           f"has rank {len(dims)}")
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and shape[i] != d.dim_value:
                raise CnnError(f"--shape-range {name}: dim {i} of {'x'.join(map(str, shape))} must be "
                               f"{d.dim_value} (it is static in the model)")
    if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
        raise CnnError(f"--shape-range {name}: needs MIN <= OPT <= MAX in every dim, got "
                       f"{':'.join('x'.join(map(str, s)) for s in (low, opt, high))}")
    return low, opt, high


def trt_version(trt) -> tuple[int, int]:
    try:
        major, minor = trt.__version__.split(".")[:2]
        return int(major), int(minor)
    except (AttributeError, ValueError):
        return (10, 0)


def build_engine(model: onnx.ModelProto, profile: Profile, fp16: bool = False,
                 workspace_bytes: int = WORKSPACE_BYTES, log=None, int8: bool = False) -> bytes:
    """A serialized TensorRT engine (a .plan) for the model, with one optimization profile.

    With fp16, a float16 model (see cnncomp.precision.fp16) is parsed into a strongly typed network
    where TensorRT has that flag, so the engine computes in the model's types; otherwise the FP16
    builder flag lets TensorRT pick float16 kernels. With int8, the model is a QDQ model
    (cnncomp.precision.int8, symmetric int8 activations) and the engine uses explicit quantization:
    strongly typed where TensorRT has that flag (the Q/DQ scales decide what runs in int8), else the
    INT8 builder flag."""
    missing = tensorrt_missing()
    if missing:
        raise CnnError("cannot build a TensorRT engine here: " + "; ".join(missing))
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise CnnError("TensorRT could not create a builder (is the GPU usable?)")
    flags = 0
    strongly_typed = (fp16 or int8) and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)  # TensorRT 10: explicit batch always
    parser = trt.OnnxParser(network, logger)
    ok = _parse(parser, model)
    if not ok:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise CnnError("TensorRT's ONNX parser refused the model:\n  " + "\n  ".join(errors or ["(no detail)"]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.INT8)
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name not in profile.shapes:
            raise CnnError(f"the network input '{tensor.name}' has no shapes in the optimization profile")
        lo, mid, hi = profile.shapes[tensor.name]
        opt.set_shape(tensor.name, lo, mid, hi)
    config.add_optimization_profile(opt)
    if log:
        log(f"building a TensorRT {'.'.join(map(str, trt_version(trt)))} engine "
            f"({'int8' if int8 else 'fp16' if fp16 else 'fp32'}, workspace {workspace_bytes >> 20} MiB)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CnnError("TensorRT failed to build the engine (its log above says why)")
    return bytes(serialized)


def _parse(parser, model: onnx.ModelProto) -> bool:
    """Parse from bytes, or from a file when the model is too large for one protobuf message."""
    from cnncomp.emit.onnx.save import EXTERNAL_DATA_LIMIT, save_onnx, weights_nbytes

    if weights_nbytes(model) <= EXTERNAL_DATA_LIMIT:
        return bool(parser.parse(model.SerializeToString()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        save_onnx(model, path, external_data=True)
        return bool(parser.parse_from_file(str(path)))


def engine_profile(model: onnx.ModelProto, min_batch: int = 1, opt_batch: int | None = None,
                   max_batch: int = 8, ranges: dict | None = None) -> Profile:
    """Everything `--target tensorrt` checks before building, in order: the model suits TensorRT's
    parser, the batch sizes make a profile, and TensorRT and a GPU are here. Raises CnnError."""
    problems = check_tensorrt_compatible(model)
    if problems:
        raise CnnError("TensorRT's ONNX parser would refuse this model:\n  " + "\n  ".join(problems))
    profile = profile_shapes(model, min_batch, opt_batch, max_batch, ranges)
    missing = tensorrt_missing()
    if missing:
        raise CnnError("cannot build a TensorRT engine here: " + "; and ".join(missing)
                       + ". The ONNX model itself suits TensorRT: compile without --target tensorrt to get it, "
                         "and build the engine on a machine with TensorRT and a GPU")
    return profile


def write_engine(model: onnx.ModelProto, profile: Profile, path, fp16: bool = False,
                 workspace_bytes: int = WORKSPACE_BYTES, log=None, int8: bool = False) -> int:
    """Build the engine and write it atomically to `path`; return its size in bytes."""
    from cnncomp.ir.weights import atomic_write

    _check_folder(path)
    plan = build_engine(model, profile, fp16=fp16, workspace_bytes=workspace_bytes, log=log, int8=int8)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(plan))
    return len(plan)


def _check_folder(path) -> None:
    folder = Path(path).parent
    if not folder.is_dir():
        raise CnnError(f"cannot write '{path}': the folder '{folder}' does not exist")
