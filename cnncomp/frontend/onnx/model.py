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
        self.constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
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
            if sum(self.constants[n].size for n in ins) > MAX_FOLDED_ELEMENTS:
                continue
            try:
                values = _evaluate(ReferenceEvaluator, node, {n: self.constants[n] for n in ins}, self.opset)
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
    a = node.attribute[0]
    value = onnx.helper.get_attribute_value(a)
    if a.name == "value":
        return numpy_helper.to_array(value)
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
