"""An ONNX model seen by the importer: producers, consumers, shapes and constants.

Loading brings the model to a known opset (`onnx.version_converter`, from 11 up
to `TARGET_OPSET`), runs ONNX shape inference, and constant-folds every node
whose inputs are all known: initializers, `Constant` nodes, and `Shape` of a
tensor whose shape is inferred. A symbolic dim (the batch `N`) folds to the
marker `SYMBOLIC_DIM`, so a shape subgraph such as
`Shape -> Gather(0) -> Unsqueeze -> Concat([., -1]) -> Reshape` folds to the
target `[SYMBOLIC_DIM, -1]`, which the patterns read as "keep the batch".
Folding runs each node alone through onnx's reference evaluator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cnncomp.errors import CnnError

MIN_OPSET = 11
TARGET_OPSET = 17  # the exporters' usual opset; newer models keep theirs when they use newer ops
SYMBOLIC_DIM = 2_147_483_629  # a dynamic dim inside folded shape values (a large prime no real dim has)
MAX_FOLDED_ELEMENTS = 1 << 26  # fold nothing larger: a model would not compute its shapes with more


class OnnxModel:
    """The nodes of one ONNX graph with their producers, consumers, inferred shapes and known constants."""

    def __init__(self, model: onnx.ModelProto, source: str = "<model>"):
        self.source = source
        self.model = _known_opset(model, source)
        graph = self.model.graph
        self.opset = _ai_onnx_opset(self.model)
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        _check_nodes(self.model, source)
        self.constants: dict[str, np.ndarray] = {t.name: _tensor_value(t, source) for t in graph.initializer}
        self.initializer_names = set(self.constants)
        init = self.initializer_names
        self.inputs = [i for i in graph.input if i.name not in init]
        self.outputs = [o.name for o in graph.output]
        self.shapes, self.dtypes = _inferred_shapes(self.model)
        self.folded: set[int] = set()  # id() of nodes whose outputs are all constants now
        self._fold_constants()

    # ---- reading --------------------------------------------------------

    def is_const(self, name: str) -> bool:
        return name in self.constants

    def const(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)

    def users(self, tensor: str) -> list[onnx.NodeProto]:
        return self.consumers.get(tensor, [])

    def single_user(self, tensor: str, node: onnx.NodeProto) -> bool:
        """Whether `node` is the only reader of `tensor` and it is no graph output."""
        users = self.users(tensor)
        return len(users) == 1 and users[0] is node and tensor not in self.outputs

    def producer_of(self, tensor: str, op_type: str | None = None) -> onnx.NodeProto | None:
        node = self.producer.get(tensor)
        if node is None or id(node) in self.folded:
            return None
        if op_type is not None and node.op_type != op_type:
            return None
        return node

    # ---- constant folding -----------------------------------------------

    def _fold_constants(self) -> None:
        from onnx.reference import ReferenceEvaluator

        for node in self.nodes:
            if node.op_type == "Constant":
                self.constants[node.output[0]] = _constant_value(node)
                self.folded.add(id(node))
                continue
            if node.op_type == "Shape" and self._shape_known(node.input[0]):
                shape = np.array([SYMBOLIC_DIM if isinstance(d, str) else d for d in self.shapes[node.input[0]]],
                                 np.int64)
                start = attrs_of(node).get("start", 0)
                end = attrs_of(node).get("end", None)
                self.constants[node.output[0]] = shape[start:end]
                self.folded.add(id(node))
                continue
            ins = [n for n in node.input if n]
            if not ins or not all(self.is_const(n) for n in ins) or node.domain not in ("", "ai.onnx"):
                continue
            feeds = {n: self.constants[n] for n in ins}
            if sum(self.constants[n].size for n in ins) > MAX_FOLDED_ELEMENTS:
                continue
            size = _folded_size(node, feeds)
            if size is None or size > MAX_FOLDED_ELEMENTS:  # a few bytes of model may ask for gigabytes
                continue
            try:
                values = _evaluate(ReferenceEvaluator, node, feeds, self.opset)
            except Exception:  # noqa: BLE001 - a node the evaluator cannot run stays a node
                continue
            for name, value in zip(node.output, values):
                if name:
                    self.constants[name] = np.asarray(value)
            self.folded.add(id(node))

    def _shape_known(self, tensor: str) -> bool:
        shape = self.shapes.get(tensor)
        return shape is not None and all(d is not None for d in shape)


def load_onnx(path: str | Path) -> OnnxModel:
    """Read an ONNX file for import; a missing or unreadable file is a CnnError."""
    path = Path(path)
    if not path.is_file():
        raise CnnError(f"{path}: no such ONNX model file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
        raise CnnError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    return OnnxModel(model, str(path))


# Ops whose output size comes from an input's values in a way _folded_size does not compute.
_SIZED_BY_VALUES = {"Pad", "Resize", "Upsample", "OneHot", "RandomNormal", "RandomUniform", "RandomNormalLike",
                    "RandomUniformLike", "EyeLike", "Einsum", "MatMulInteger", "Col2Im", "CenterCropPad",
                    "ConvTranspose", "GatherND", "ScatterND", "TopK", "NonZero", "Unique", "StringSplit"}


def _folded_size(node: onnx.NodeProto, feeds: dict) -> int | None:
    """Elements the outputs of folding this node would hold, at most, from its inputs alone (a model's
    declared shapes could lie); None when that is not known beforehand (the node is then not folded).
    Six ConstantOfShape([2**29]) in a 736-byte model would otherwise allocate 12 GB."""
    values = [feeds.get(n) for n in node.input]
    try:
        if node.op_type == "ConstantOfShape":
            return _numel(int(d) for d in values[0].reshape(-1))
        if node.op_type == "Expand":
            return _numel(np.broadcast_shapes(values[0].shape, tuple(int(d) for d in values[1].reshape(-1))))
        if node.op_type == "Tile":
            return values[0].size * _numel(int(r) for r in values[1].reshape(-1))
        if node.op_type == "Range":
            start, limit, delta = (float(v.reshape(-1)[0]) for v in values[:3])
            return max(0, int(np.ceil((limit - start) / delta))) if delta else None
        if node.op_type == "Gather":
            data, indices = values[0], values[1]
            axis = int(attrs_of(node).get("axis", 0)) % max(data.ndim, 1)
            return indices.size * (data.size // data.shape[axis] if data.ndim and data.shape[axis] else 1)
        if node.op_type in ("MatMul", "Gemm"):
            a, b = values[0], values[1]
            if a.ndim < 2 or b.ndim < 2:
                return max(a.size, b.size)
            return _numel(np.broadcast_shapes(a.shape[:-2], b.shape[:-2])) * max(a.shape[-2:]) * max(b.shape[-2:])
    except (TypeError, ValueError, IndexError, AttributeError, OverflowError, ZeroDivisionError):
        return None
    if node.op_type in _SIZED_BY_VALUES:
        return None
    read = [v for v in values if v is not None]  # each occurrence: Concat([c, c, ..., c]) repeats c
    try:  # elementwise ops broadcast their inputs; the rest give at most what they read
        broadcast = _numel(np.broadcast_shapes(*(v.shape for v in read)))
    except ValueError:
        broadcast = 0
    return max(broadcast, sum(v.size for v in read)) * max(1, len(node.output))


def _tensor_value(t: onnx.TensorProto, source: str, where: str = "initializer") -> np.ndarray:
    """A tensor's value; one whose data does not fill its dims or type (a malformed file) is a CnnError."""
    try:
        return numpy_helper.to_array(t)
    except Exception as exc:  # noqa: BLE001 - onnx raises ValueError, TypeError or KeyError for these
        dims = "x".join(str(d) for d in t.dims) or "scalar"
        raise CnnError(f"{source}: {where} '{t.name}' ({dims}, data type {t.data_type}) is malformed: "
                       f"{type(exc).__name__}: {exc}") from None


def _check_nodes(model: onnx.ModelProto, source: str) -> None:
    """Each standard node against its operator schema (input and output counts, required attributes and
    their types), so that the patterns read only well-formed nodes; a bad node is a CnnError naming it."""
    from onnx import checker, defs

    ctx = checker.C.CheckerContext()
    try:
        ctx.ir_version = model.ir_version or onnx.IR_VERSION
        ctx.opset_imports = {op.domain or "": op.version for op in model.opset_import}
    except (TypeError, ValueError) as exc:  # a domain that is not text, a version out of range
        raise CnnError(f"{source}: the model's opset imports are malformed ({exc})") from None
    lex = checker.C.LexicalScopeContext()
    const_types = {t.name: t.data_type for t in model.graph.initializer}
    for i, node in enumerate(model.graph.node):
        texts = [node.name, node.op_type, node.domain, *node.input, *node.output, *(a.name for a in node.attribute)]
        if not all(isinstance(t, str) for t in texts):  # protobuf hands over invalid UTF-8 as bytes
            raise CnnError(f"{source}: node {i} has a name, type or input that is not UTF-8 text")
        if node.domain not in ("", "ai.onnx"):
            continue
        where = f"node {i} '{node.name}' ({node.op_type})" if node.name else f"node {i} ({node.op_type})"
        if not defs.has(node.op_type, node.domain):
            raise CnnError(f"{source}: {where}: no such ONNX operator")
        try:
            checker.C.check_node(node.SerializeToString(), ctx, lex)
            problem = _constant_type_problem(node, const_types, ctx.opset_imports.get("", 1))
        except Exception as exc:  # noqa: BLE001 - ValidationError, or a schema lookup failure
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CnnError(f"{source}: {where} is malformed: {message}") from None
        if problem:
            raise CnnError(f"{source}: {where} is malformed: {problem}")
        if node.op_type == "Constant" and node.output and len(node.attribute) == 1 and node.attribute[0].name == "value":
            const_types[node.output[0]] = node.attribute[0].t.data_type


def _constant_type_problem(node: onnx.NodeProto, const_types: dict, opset: int) -> str | None:
    """Whether a constant input (an initializer, a Constant's output) has an element type the operator's
    schema does not allow for it, such as a float Reshape shape: the patterns read those values."""
    from onnx import defs

    schema = defs.get_schema(node.op_type, opset, node.domain or "")
    if not schema.inputs:
        return None
    allowed_by_param = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for i, name in enumerate(node.input):
        if name not in const_types:
            continue
        formal = schema.inputs[min(i, len(schema.inputs) - 1)]
        allowed = allowed_by_param.get(formal.type_str, {formal.type_str})
        try:
            given = f"tensor({onnx.TensorProto.DataType.Name(const_types[name]).lower()})"
        except ValueError:
            return f"input '{name}' has the unknown element type {const_types[name]}"
        if given not in allowed:
            return f"input {i} ('{name}', {formal.name}) is a {given}, which {node.op_type} does not take there"
    return None


def _ai_onnx_opset(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return 1


def _known_opset(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """The model at an opset the patterns know: older ones (11..16) converted up to 17."""
    opset = _ai_onnx_opset(model)
    if opset < MIN_OPSET:
        raise CnnError(f"{source}: opset {opset} is older than the oldest the importer reads ({MIN_OPSET}); "
                       "re-export the model with opset 11 or newer")
    if opset >= TARGET_OPSET:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, TARGET_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter's errors name the node it could not convert
        raise CnnError(f"{source}: could not bring opset {opset} to {TARGET_OPSET}: {exc}") from None


def _inferred_shapes(model: onnx.ModelProto) -> tuple[dict, dict]:
    """Tensor name -> shape (ints, dim_param strings, None where unknown) and element type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_large_weights(model), data_prop=True)
    except Exception:  # noqa: BLE001 - without inference, shapes come from the graph's own declarations
        inferred = model
    shapes, dtypes = {}, {}
    g = inferred.graph
    for info in list(g.input) + list(g.value_info) + list(g.output):
        t = info.type.tensor_type
        if not t.HasField("shape"):
            continue
        shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                  for d in t.shape.dim)
        dtypes[info.name] = t.elem_type
    return shapes, dtypes


def _without_large_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model whose large initializers are typed graph inputs: shape inference
    needs their shapes, not their values, and serializes the whole model otherwise."""
    from onnx import helper

    light = onnx.ModelProto()
    light.ir_version, light.producer_name = model.ir_version, model.producer_name
    light.opset_import.extend(model.opset_import)
    g = model.graph
    small = [t for t in g.initializer if _numel(t.dims) <= 4096]
    declared = {i.name for i in g.input}
    large = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
             for t in g.initializer if _numel(t.dims) > 4096 and t.name not in declared]
    light.graph.CopyFrom(helper.make_graph(list(g.node), g.name, list(g.input) + large, list(g.output), small,
                                           value_info=list(g.value_info)))
    return light


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def attrs_of(node: onnx.NodeProto) -> dict:
    """A node's attributes as Python values (bytes decoded to str)."""
    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    if len(node.attribute) != 1:
        raise CnnError(f"Constant node '{node.name}' has {len(node.attribute)} attributes; it holds its value in one")
    a = node.attribute[0]
    value = onnx.helper.get_attribute_value(a)
    if a.name == "value":
        return _tensor_value(value, "the model", f"Constant node '{node.name}' value")
    if a.name in ("value_float", "value_int"):
        return np.asarray(value, np.float32 if a.name == "value_float" else np.int64)
    if a.name in ("value_floats", "value_ints"):
        return np.asarray(value, np.float32 if a.name == "value_floats" else np.int64)
    raise CnnError(f"Constant node '{node.name}' holds a {a.name}, which the importer does not read")


def _evaluate(evaluator, node: onnx.NodeProto, feeds: dict, opset: int) -> list:
    from onnx import helper

    ins = [helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for n, v in feeds.items()]
    outs = [helper.make_empty_tensor_value_info(n) for n in node.output if n]
    graph = helper.make_graph([node], "fold", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return evaluator(model).run(None, feeds)
