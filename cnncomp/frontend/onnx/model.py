"""An ONNX model seen by the importer: producers, consumers, shapes and constants.

Loading brings the model to a known opset (`onnx.version_converter`, from 11 up
to `TARGET_OPSET`), then alternates ONNX shape inference and constant folding
until neither learns more: folding computes every node whose inputs are all
known (initializers, `Constant` nodes, and `Shape` of a tensor whose dims are
inferred), and the folded values, put back into the graph as initializers,
let inference see shapes that a computed `Slice` or `Pad` had hidden (timm's
dynamic "same" padding, `chunk`). A dim declared symbolic on a graph input
(the batch `N`) folds to the marker `SYMBOLIC_DIM`, so a shape subgraph such as
`Shape -> Gather(0) -> Unsqueeze -> Concat([., -1]) -> Reshape` folds to the
target `[SYMBOLIC_DIM, -1]`, which the patterns read as "keep the batch". The
marker only travels through nodes that move values (Gather, Concat, ...): no
arithmetic is done on it. A dim that inference could not work out is None,
never the marker; `shape_blocker` names the node where inference lost it.
Folding runs each node alone through onnx's reference evaluator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cnncomp.errors import CnnError
from cnncomp.onnx_graph import attrs_of  # noqa: F401  (the patterns read it from here)

MIN_OPSET = 11
TARGET_OPSET = 17  # the exporters' usual opset; newer models keep theirs when they use newer ops
SYMBOLIC_DIM = 2_147_483_629  # a dynamic dim inside folded shape values (a large prime no real dim has)
MAX_FOLDED_ELEMENTS = 1 << 26  # fold nothing larger: a model would not compute its shapes with more
# Ops that move values without computing on them: the only ones that fold an input holding SYMBOLIC_DIM
# (arithmetic on the marker would make a number that looks like a real dim).
_MARKER_SAFE = {"Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Identity", "Reshape", "Flatten", "Cast",
                "Shape", "Size", "Transpose"}


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
        self.symbolic = {d.dim_param for i in self.inputs for d in i.type.tensor_type.shape.dim if d.dim_param}
        self.folded: set[int] = set()  # id() of nodes whose outputs are all constants now
        self.shapes, self.dtypes = _inferred_shapes(_light_model(self.model), self.symbolic)
        self._fold_constants()
        self.reshaped: dict[str, tuple] = {}  # Reshape and Resize outputs whose shapes the importer worked out
        while True:  # folded values can reveal shapes: infer again until stable (each round folds more or stops)
            self.reshaped.update(self._worked_out_shapes())
            shapes, dtypes = _inferred_shapes(self._with_folded_values(), self.symbolic)
            shapes.update(self.reshaped)  # a graph output's declared shape hides them from inference
            if shapes == self.shapes:
                break
            self.shapes, self.dtypes = shapes, dtypes
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

    def shape_known(self, tensor: str) -> bool:
        """Whether every dim of the tensor is inferred (a number, or a symbolic dim of the inputs)."""
        shape = self.shapes.get(tensor)
        return shape is not None and all(d is not None for d in shape)

    def shape_blocker(self, tensor: str) -> onnx.NodeProto | None:
        """The first node, going back from `tensor`, whose output shape inference could not work out although
        it knew its inputs' shapes: where the shape of `tensor` was lost. None if the shape is known."""
        seen: set[str] = set()
        todo = [tensor]
        blocker = None
        while todo:
            name = todo.pop()
            if name in seen or self.shape_known(name) or name in self.constants:
                continue
            seen.add(name)
            node = self.producer.get(name)
            if node is None:
                continue
            unknown = [i for i in node.input if i and not self.shape_known(i) and i not in self.constants]
            if not unknown:
                if blocker is None or self._position(node) < self._position(blocker):
                    blocker = node
            todo.extend(unknown)
        return blocker

    def _position(self, node: onnx.NodeProto) -> int:
        return next(i for i, n in enumerate(self.nodes) if n is node)

    # ---- constant folding -----------------------------------------------

    def _fold_constants(self) -> None:
        from onnx.reference import ReferenceEvaluator

        for node in self.nodes:
            if id(node) in self.folded:
                continue
            if node.op_type == "Constant":
                self.constants[node.output[0]] = _constant_value(node)
                self.folded.add(id(node))
                continue
            if node.op_type == "Shape":
                dims = self.shapes.get(node.input[0])
                if dims is not None:
                    dims = list(dims)[attrs_of(node).get("start", 0):attrs_of(node).get("end", None)]
                    if all(d is not None for d in dims):
                        self.constants[node.output[0]] = np.array(
                            [SYMBOLIC_DIM if isinstance(d, str) else d for d in dims], np.int64)
                        self.folded.add(id(node))
                continue
            ins = [n for n in node.input if n]
            if not ins or not all(self.is_const(n) for n in ins) or node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type not in _MARKER_SAFE and any(
                    self.constants[n].dtype == np.int64 and np.any(self.constants[n] == SYMBOLIC_DIM) for n in ins):
                continue  # arithmetic on a dynamic dim: its value is not known before run time
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

    def _with_folded_values(self) -> onnx.ModelProto:
        """The model with folded nodes replaced by their values as initializers, for shape inference; a value
        holding SYMBOLIC_DIM keeps its nodes instead (inference reads the symbolic dim through them)."""
        kept, values = [], {}
        for node in self.nodes:
            outs = [o for o in node.output if o]
            if id(node) in self.folded and node.op_type != "Constant" and not any(
                    self.constants[o].dtype == np.int64 and np.any(self.constants[o] == SYMBOLIC_DIM) for o in outs):
                values.update({o: self.constants[o] for o in outs})
            else:
                kept.append(node)
        needed = {i for node in kept for i in node.input} | set(self.outputs)
        from onnx import helper

        known = [helper.make_tensor_value_info(name, self.dtypes.get(name, onnx.TensorProto.FLOAT), list(shape))
                 for name, shape in self.reshaped.items()]
        return _light_model(self.model, kept, [numpy_helper.from_array(np.asarray(v), name)
                                               for name, v in values.items() if name in needed], known)

    def _worked_out_shapes(self) -> dict[str, tuple]:
        """Output shapes that ONNX inference leaves partly unknown although they follow from known values.

        ONNX does not cancel a symbolic dim against itself, so `x.view(n, -1, h, w)` with a dynamic batch `n`
        loses its channels: a Reshape to a folded target is worked out when the target keeps each symbolic dim
        of the input where it was (the marker at a symbolic dim's place), so that the known dims alone give
        the -1. A Resize by constant scales loses a symbolic dim even where it scales it by 1, and one to sizes
        read from a Shape (`F.interpolate(x, size=y.shape[-2:])`) loses it too: kept."""
        out = {}
        for node in self.nodes:
            if id(node) in self.folded or self.shape_known(node.output[0]):
                continue
            if node.op_type == "Resize":
                shape = self.shapes.get(node.input[0])
                scales = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                sizes = self.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
                got = self.shapes.get(node.output[0])
                dims = None
                if shape is not None and sizes is not None and sizes.size == len(shape):
                    # sizes computed from a Shape: the marker where they keep the input's symbolic dim
                    dims = tuple(d if t == SYMBOLIC_DIM and isinstance(d, str) else int(t)
                                 for d, t in zip(shape, sizes.tolist()))
                elif shape is not None and scales is not None and got is not None and len(got) == len(shape) \
                        and scales.size == len(shape):
                    dims = tuple(d if g is None and isinstance(d, str) and s == 1 else g
                                 for d, g, s in zip(shape, got, scales.tolist()))
                if dims is not None and all(d is not None and d != SYMBOLIC_DIM for d in dims):
                    out[node.output[0]] = dims
                continue
            if node.op_type != "Reshape":
                continue
            shape, target = self.shapes.get(node.input[0]), self.const(node.input[1])
            if shape is None or target is None or not all(d is not None for d in shape):
                continue
            copy_zero = not attrs_of(node).get("allowzero", 0)
            dims: list = []
            for i, t in enumerate(target.tolist()):
                same = i < len(shape) and ((t == 0 and copy_zero) or (t == SYMBOLIC_DIM and isinstance(shape[i], str)))
                dims.append(shape[i] if same else t)
            symbolic_in = [(i, d) for i, d in enumerate(shape) if isinstance(d, str)]
            symbolic_out = [(i, d) for i, d in enumerate(dims) if isinstance(d, str)]
            if symbolic_in != symbolic_out or any(d == SYMBOLIC_DIM for d in dims) or dims.count(-1) > 1:
                continue
            known_in = int(np.prod([d for d in shape if isinstance(d, int)]))
            known_out = int(np.prod([d for d in dims if isinstance(d, int) and d != -1]))
            if -1 in dims:
                if known_out == 0 or known_in % known_out:
                    continue
                dims[dims.index(-1)] = known_in // known_out
            out[node.output[0]] = tuple(dims)
        return out


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


def _inferred_shapes(model: onnx.ModelProto, symbolic: set[str]) -> tuple[dict, dict]:
    """Tensor name -> shape (ints, the inputs' `symbolic` dim names, None where unknown) and element type.
    Names inference makes up for dims it cannot work out (`unk__3`) are None: unknown, not dynamic."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - without inference, shapes come from the graph's own declarations
        inferred = model
    shapes, dtypes = {}, {}
    g = inferred.graph
    for info in list(g.input) + list(g.value_info) + list(g.output):
        t = info.type.tensor_type
        if not t.HasField("shape"):
            continue
        shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else
                                  (d.dim_param if d.dim_param in symbolic else None) for d in t.shape.dim)
        dtypes[info.name] = t.elem_type
    return shapes, dtypes


def _light_model(model: onnx.ModelProto, nodes=None, extra_initializers=(), value_info=()) -> onnx.ModelProto:
    """A copy of the model (with `nodes` instead of its own, and more initializers) for shape inference, whose
    large initializers are typed graph inputs: inference needs their shapes, not their values, and
    serializes the whole model otherwise."""
    from onnx import helper

    light = onnx.ModelProto()
    light.ir_version, light.producer_name = model.ir_version, model.producer_name
    light.opset_import.extend(model.opset_import)
    g = model.graph
    small = [t for t in g.initializer if _numel(t.dims) <= 4096] + list(extra_initializers)
    declared = {i.name for i in g.input}
    large = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
             for t in g.initializer if _numel(t.dims) > 4096 and t.name not in declared]
    light.graph.CopyFrom(helper.make_graph(list(g.node) if nodes is None else list(nodes), g.name,
                                           list(g.input) + large, list(g.output), small,
                                           value_info=list(g.value_info) if nodes is None else list(value_info)))
    return light


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


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
