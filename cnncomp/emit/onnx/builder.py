"""OnnxBuilder: the small interface through which each op lowers a layer to ONNX.

An op's `to_onnx(b, layer, inputs, weights)` sees only this builder:

- `node(op_type, inputs, outputs, **attrs)` appends a node. The node that
  produces the layer's output (the tensor named after the layer) is named
  after the layer; helper nodes get unique names derived from their first
  output. Every node's doc_string is the layer's spec location.
- `fresh(hint)` returns a tensor name no one has used yet.
- `const_*` make initializers for small constants; identical constants are
  stored once, whatever hint they were asked for with.
- `const_reshaped` and `const_transposed` derive a new initializer from a
  weight initializer (a PReLU slope viewed as [C, 1, 1], a transposed
  linear weight).
- `require_opset(version, what)` records that the model needs at least that
  opset; the emitter raises the model's opset and says so.
- `shape(tensor)` is the spec shape of a layer's output (for lowerings that
  depend on input sizes, such as ceil-mode pooling).

Names are deterministic: the same calls in the same order give the same
names, so the same graph always gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cnncomp.ir.graph import unique_name

NP_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64}
ONNX_DTYPES = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16,
               "float64": onnx.TensorProto.DOUBLE}


def np_dtype(dtype: str) -> type:
    """The numpy dtype of a spec dtype name (float32, float16, float64)."""
    try:
        return NP_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype '{dtype}'; expected one of {', '.join(NP_DTYPES)}") from None


class OnnxBuilder:
    """Collects the nodes and initializers of one ONNX graph, with unique, deterministic names."""

    def __init__(self, reserved: Iterable[str] = ()):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}  # in creation order
        self.requirements: list[tuple[int, str]] = []  # (opset, what needs it)
        self.shapes: dict[str, tuple] = {}  # tensor name -> spec shape
        self.symbol_sources: dict[str, tuple[str, int]] = {}  # spec symbol -> (graph input, axis): emit/onnx/sizes.py
        self._taken: set[str] = set(reserved)  # tensor names in use or set aside
        self._produced: set[str] = set()  # tensor names some node or initializer defines
        self._node_names: set[str] = set()
        self._consts: dict[tuple, str] = {}  # (dtype, shape, bytes) -> initializer name
        self._derived: dict[tuple, str] = {}  # (kind, source, shape) -> initializer name
        self._layer = None

    # ---- context ----------------------------------------------------------

    def begin_layer(self, layer) -> None:
        """Set the layer whose nodes come next (their names and doc_string follow it)."""
        self._layer = layer

    def end_layer(self) -> None:
        """Leave the current layer: nodes made after this carry no layer location."""
        self._layer = None

    def shape(self, tensor: str) -> tuple:
        """The spec shape of a layer's output tensor."""
        return self.shapes[tensor]

    # ---- names ------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        """A tensor name not used yet: the hint, or the hint with a numeric suffix."""
        name = unique_name(hint, self._taken)
        self._taken.add(name)
        return name

    def _node_name(self, outputs: Sequence[str]) -> str:
        layer = self._layer
        base = layer.name if layer is not None and layer.name in outputs else outputs[0]
        name = unique_name(base, self._node_names)
        self._node_names.add(name)
        return name

    def is_defined(self, name: str) -> bool:
        """Whether some node output or initializer already has this name."""
        return name in self._produced

    def _define(self, name: str) -> None:
        if not name:
            raise ValueError("a tensor name must not be empty")
        if name in self._produced:
            raise ValueError(f"tensor '{name}' is defined twice")
        self._produced.add(name)
        self._taken.add(name)

    # ---- nodes ------------------------------------------------------------

    def node(self, op_type: str, inputs: Sequence[str], outputs: str | Sequence[str], **attrs: Any):
        """Append a node; return its output name (for a str) or names (a tuple, for a list)."""
        single = isinstance(outputs, str)
        outs = [outputs] if single else list(outputs)
        for o in outs:
            self._define(o)
        doc = self._layer.where if self._layer is not None else ""
        node = helper.make_node(op_type, list(inputs), outs, name=self._node_name(outs), doc_string=doc or None,
                                **attrs)
        self.nodes.append(node)
        return outputs if single else tuple(outs)

    def rename_tensor(self, old: str, new: str) -> None:
        """Rename a tensor in every node that reads or writes it."""
        for node in self.nodes:
            for seq in (node.input, node.output):
                for i, name in enumerate(seq):
                    if name == old:
                        seq[i] = new
        self._produced.discard(old)
        self._produced.add(new)
        self._taken.add(new)
        if old in self.shapes:
            self.shapes[new] = self.shapes.pop(old)

    # ---- initializers -----------------------------------------------------

    def add_initializer(self, name: str, array: np.ndarray) -> str:
        """Add a named initializer (a weight) under exactly that name."""
        self._define(name)
        self.initializers[name] = np.ascontiguousarray(array)
        return name

    def _const(self, array: np.ndarray, hint: str) -> str:
        array = np.ascontiguousarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh(hint)
            self.add_initializer(name, array)
            self._consts[key] = name
        return self._consts[key]

    def const_int64(self, values: Sequence[int], hint: str) -> str:
        """A 1-D int64 initializer (shapes, pads, axes)."""
        return self._const(np.asarray(values, dtype=np.int64).reshape(-1), hint)

    def sizes(self, values: Sequence, hint: str) -> str:
        """A 1-D int64 tensor of sizes: constants, or symbolic sizes computed from the inputs' shapes at run time."""
        from cnncomp.emit.onnx.sizes import size_tensor

        return size_tensor(self, values, hint)

    def const_float(self, values: Sequence[float], hint: str) -> str:
        """A 1-D float32 initializer (Resize scales are float32 whatever the data type)."""
        return self._const(np.asarray(values, dtype=np.float32).reshape(-1), hint)

    def const_scalar(self, value: float, dtype: str) -> str:
        """A 0-d initializer of the layer's dtype."""
        array = np.asarray(value, dtype=np_dtype(dtype))
        return self._const(array, f"const/{dtype}/{array.item()!r}")

    def const_filled(self, value: float, shape: Sequence[int], dtype: str, hint: str) -> str:
        """An initializer of the given shape filled with one value."""
        return self._const(np.full(tuple(shape), value, dtype=np_dtype(dtype)), hint)

    def const_reshaped(self, initializer: str, shape: Sequence[int]) -> str:
        """A new initializer: an existing one with another shape (same data order)."""
        key = ("reshape", initializer, tuple(shape))
        if key not in self._derived:
            array = self.initializers[initializer].reshape(tuple(shape))
            self._derived[key] = self.add_initializer(self.fresh(initializer + "/reshaped"), array)
        return self._derived[key]

    def const_transposed(self, initializer: str) -> str:
        """A new initializer: an existing one with its axes reversed (a 2-D weight transposed)."""
        key = ("transpose", initializer, ())
        if key not in self._derived:
            array = np.ascontiguousarray(self.initializers[initializer].T)
            self._derived[key] = self.add_initializer(self.fresh(initializer + "/transposed"), array)
        return self._derived[key]

    # ---- opset ------------------------------------------------------------

    def require_opset(self, version: int, what: str) -> None:
        """Record that the model needs at least this ai.onnx opset for `what`."""
        self.requirements.append((int(version), what))

    def required_opset(self) -> tuple[int, list[str]]:
        """The highest opset some lowering asked for, and what asked for it."""
        if not self.requirements:
            return 0, []
        top = max(v for v, _ in self.requirements)
        whats = sorted({w for v, w in self.requirements if v == top})
        return top, whats

    # ---- result -----------------------------------------------------------

    def used_initializers(self, outputs: Iterable[str] = ()) -> list[onnx.TensorProto]:
        """The initializers some node or graph output reads, as TensorProtos, in creation order."""
        used = set(outputs)
        for node in self.nodes:
            used.update(node.input)
        return [numpy_helper.from_array(array, name) for name, array in self.initializers.items() if name in used]
