"""Where ONNX Runtime's int8 falls short of a network, found before the user sees it.

Any network the compiler emits must quantize to a model that loads and runs, with the layers that
have no usable int8 kernel kept in float32, or fail with an error that names the layer. Three kinds
of gap, each found here rather than special-cased per op elsewhere:

  - known quantizer limits, seen in the float model (`known_unsupported`): a grouped ConvTranspose
    (the quantizer's per-channel weight scales do not broadcast against its bias);
  - kernels that refuse the quantized node when the session loads or runs it (`failing_node`): for
    example QLinearAveragePool takes no `dilations` attribute and no 3-D window; the node that ONNX
    Runtime names is kept in float32 and the model quantized again;
  - activations that are not finite on the calibration data (`nonfinite_activations`): int8 has no
    range for them, so the error names the layer.

And where int8 has a kernel but the runtime runs the layer faster in float32 (`slower_in_int8`, the
placement rules of PLACEMENT_RULES, one table per runtime): such layers get no Q/DQ nodes at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx

from cnncomp.onnx_graph import add_outputs, attrs_of, consumers, producers, skeleton
from cnncomp.precision.int8_speed import COMPUTE_OPS  # where int8 saves time

# ONNX Runtime names the node it failed on in these shapes of message
_NODE_IN_MESSAGE = (re.compile(r'In Node, \("([^"]+)"'), re.compile(r"Name:'([^']+)'"),
                    re.compile(r"Node \(([^)]+)\) Op \("))


def short_reason(message: str) -> str:
    """The part of an ONNX Runtime error that says what is wrong (not which tensors the node has)."""
    for marker in (", Error ", "Status Message: ", "[ShapeInferenceError] "):
        if marker in message:
            return message.rsplit(marker, 1)[1].strip().splitlines()[0][:160]
    return message.strip().splitlines()[0][:160]


def known_unsupported(model: onnx.ModelProto) -> dict[str, str]:
    """{node: why} for the float nodes ONNX Runtime's quantizer cannot quantize (it raises, naming none)."""
    out = {}
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "ConvTranspose" and attrs_of(node).get("group", 1) > 1:
            out[node.name] = "a grouped ConvTranspose (the quantizer's per-channel scales do not fit its bias)"
        if node.op_type == "LayerNormalization" and len(shapes.get(node.input[1], ())) > 1:
            out[node.name] = "a LayerNormalization over several axes (the quantizer takes a 1-D scale only)"
    return out


def failing_node(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[str | None, str] | None:
    """None when ONNX Runtime loads the model and runs it on `feeds`; else (the node it names or None, its
    message)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own exception types; any of them is the answer
        message = str(e)
        for pattern in _NODE_IN_MESSAGE:
            found = pattern.search(message)
            if found:
                return found.group(1), message
        return None, message
    return None


def int8_weight_scales(weight: np.ndarray, axis: int = 0) -> np.ndarray:
    """The per-channel scales along `axis` that ONNX Runtime's quantizer gives symmetric int8 weights
    (quant_utils.compute_scale_zp: each channel's range widened to hold 0 and made symmetric, 2 * max|w| / 254
    computed in float64 and stored as float32; 1.0 where that is under float32's smallest normal), float32."""
    moved = np.moveaxis(np.asarray(weight), axis, 0).reshape(np.shape(weight)[axis], -1)
    absmax = np.maximum(np.abs(np.minimum(moved.min(axis=1), 0)), np.maximum(moved.max(axis=1), 0))
    scale = 2 * absmax.astype(np.float64) / 254
    return np.where(scale < np.finfo(np.float32).tiny, 1.0, scale).astype(np.float32)


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the model that also outputs these tensors (to look inside it)."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    add_outputs(probe.graph, names)
    return probe


def nonfinite_activations(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """(node, what) for every node output that is NaN or infinite on `feeds`, in graph order."""
    import onnxruntime as ort

    producer = {name: n.name for name, n in producers(model).items()}
    probe = with_outputs(model, list(producer))
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    found = []
    for name, value in zip(names, session.run(names, feeds)):
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            kinds = [k for k, bad in (("NaN", np.isnan(value).any()), ("+Inf", np.isposinf(value).any()),
                                      ("-Inf", np.isneginf(value).any())) if bad]
            found.append((producer.get(name, name), "/".join(kinds)))
    return found


def neighbourhood(model: onnx.ModelProto, node: str, hops: int = 1) -> set[str]:
    """The node and every node within `hops` tensor edges of it (producers and consumers)."""
    producer = {name: n.name for name, n in producers(model).items()}
    readers = {name: [n.name for n in nodes] for name, nodes in consumers(model).items()}
    by_name = {n.name: n for n in model.graph.node}
    found, frontier = {node}, {node}
    for _ in range(hops):
        step = set()
        for name in frontier:
            current = by_name[name]
            step |= {producer[i] for i in current.input if i in producer}
            step |= {c for o in current.output for c in readers.get(o, [])}
        frontier = step - found
        found |= step
    return found


# ---- placement: where int8 pays, per runtime ---------------------------------------------------------------
#
# Whether a layer gains from int8 depends on the runtime's kernels, not on the layer alone. Under ONNX Runtime's
# CPU provider (batch 1, one thread; docs/precision.md, "Placement: where ONNX Runtime runs a layer faster in
# float32") int8 1x1 and dense
# 3x3 convs run two to three times as fast as float32, but on MobileNetV3-style networks (hard-swish, squeeze-
# excite, 5x5 depthwise convs) full int8 was 0.4x to 0.7x as fast as float32: ONNX Runtime has no int8 kernel
# for HardSwish/HardSigmoid, so each conv before one runs QuantizeLinear + DequantizeLinear + the activation
# unfused on its whole output (float32 fuses the activation into the conv); its int8 5x5 depthwise conv is 4-6x
# slower than float32's; QLinearMul and QLinearGlobalAveragePool are about 2x slower than float32 Mul and
# GlobalAveragePool; and a conv of a few thousand MACs (a squeeze-excite conv on a 1x1 map) costs more in
# int8's fixed overhead and its Q/DQ nodes than it saves.
#
# The rules below are rows of one table per runtime. Each takes a layer group (a node that sets a new
# quantization scale, with the pass-through nodes after it: int8.layer_groups) and the graph's facts, and
# returns why the group stays float32 there, or None. `slower_in_int8` applies them until nothing changes,
# since a group that goes back to float32 can leave its neighbours' int8 outputs read only by float32 nodes.
# OpenVINO and TensorRT fuse differently (their own graph transformations, not ONNX Runtime's QDQ fusions): their
# tables are empty until measured there.

# A layer whose sizes are symbolic (no MACs known) is left to the rules that need none and to the measured
# search.
MIN_INT8_MACS = 100_000  # below this (per sample) an int8 conv/gemm's fixed cost outweighs what it saves ...
# ... where it is a small part of the network's work (a squeeze-excite conv): in a network made of such layers
# only, none is kept float32 for it (int8 will not be faster there; the not-faster rule says so with both times)
TINY_SHARE = 0.01
# An int8 conv whose output only float32 nodes read pays a QuantizeLinear and a DequantizeLinear per output
# element (~1.5 ns here); int8 saves ~0.009 ns per MAC (a 1x1 conv: 61 GMAC/s float32, 130 GMAC/s int8), so
# below ~170 MACs per output element (a 1x1 conv over fewer input channels) it loses; 256 leaves a margin.
MIN_MACS_PER_DEQUANTIZED_OUTPUT = 256
# ONNX Runtime's QLinearMul (a squeeze-excite gate, x * hardsigmoid(x)) and QLinearGlobalAveragePool ran about
# 2x slower than float32's on MobileNetV3's maps; kept float32 where an input is float32 anyway (on ResNet's and
# SE-ResNet's int8 maps they stay int8: there a Q/DQ pair on a large tensor costs more)
SLOW_INT8_ELEMENTWISE = ("Mul", "GlobalAveragePool")
# A conv read only by a hard-swish that ONNX Runtime then runs in int8 (int8_hardswish: QLinearAdd + QLinearMul,
# where the hard-swish's readers are int8) pays those two kernels per output element instead of the float32
# round trip: 0.75 to 0.91 ns against 2.0 to 2.1 ns (tools/bench_int8_hardswish.py, against int8 with a fused
# Relu; docs/precision.md, "Int8 hard-swish"), a break even of ~95 MACs per output element against the round
# trip's ~225; 110 keeps the margin that 256 keeps over it
MIN_MACS_PER_INT8_HARD_SWISH_OUTPUT = 110
LARGEST_INT8_DEPTHWISE_WINDOW = 9  # 3x3: ONNX Runtime's int8 depthwise kernel is about float32's speed there


@dataclass
class GraphFacts:
    """What the placement rules read: the float32 model's nodes, groups, shapes and weights, and the groups
    kept in float32 so far."""

    model: onnx.ModelProto
    groups: dict[str, list[str]]  # head -> [head, pass-through nodes] (int8.layer_groups)
    quantizable: frozenset  # op types ONNX Runtime's quantizer gives an int8 kernel
    floats: set = field(default_factory=set)  # groups kept in float32 so far

    def __post_init__(self):
        inferred = onnx.shape_inference.infer_shapes(skeleton(self.model))
        self.shapes = {v.name: [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
                       for v in list(inferred.graph.value_info) + list(inferred.graph.output)
                       + list(inferred.graph.input)}
        self.weights = {t.name: list(t.dims) for t in self.model.graph.initializer}
        self.nodes = {n.name: n for n in self.model.graph.node}
        self.producer = producers(self.model)
        self.readers = consumers(self.model)
        self.group_of = {m: head for head, members in self.groups.items() for m in members}
        self.graph_outputs = {o.name for o in self.model.graph.output}
        self.total_macs = sum(self.macs(n) or 0 for n in self.model.graph.node if n.op_type in COMPUTE_OPS)

    def macs(self, node: onnx.NodeProto) -> int | None:
        """Multiply-accumulates per sample of a conv/gemm/matmul with a constant weight (None: unknown)."""
        weight = self.weights.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None:
            return None
        if node.op_type in ("Gemm", "MatMul"):
            return int(np.prod(weight))
        out = self.shapes.get(node.output[0])
        if not out or len(out) < 3 or not all(out[1:]):
            return None
        if node.op_type == "ConvTranspose":  # each input element meets every weight of its group
            source = self.shapes.get(node.input[0])
            return int(np.prod(source[1:]) * np.prod(weight[1:])) if source and all(source[1:]) else None
        return int(np.prod(out[1:])) * int(np.prod(weight[1:]))

    def outputs_per_sample(self, node: onnx.NodeProto) -> int | None:
        out = self.shapes.get(node.output[0])
        return int(np.prod(out[1:])) if out and len(out) > 1 and all(out[1:]) else None

    def runs_float(self, name: str) -> bool:
        """Whether a node runs in float32: it has no int8 kernel, belongs to no group (a pass-through node after
        one that has none), or its group is kept in float32."""
        node = self.nodes[name]
        return node.op_type not in self.quantizable or self.group_of.get(name) in (None, *self.floats)

    def group_readers(self, head: str) -> list[str]:
        """The nodes outside a group that read its tensors."""
        members = set(self.groups[head])
        return [r.name for m in self.groups[head] for o in self.nodes[m].output for r in self.readers.get(o, [])
                if r.name not in members]

    def writes_output(self, head: str) -> bool:
        """Whether a group makes a graph output."""
        return any(o in self.graph_outputs for m in self.groups[head] for o in self.nodes[m].output)

    def group_sources(self, head: str) -> list[str | None]:
        """The producers of a group head's activation inputs (None: a graph input)."""
        node = self.nodes[head]
        return [self.producer[i].name if i in self.producer else None for i in node.input
                if i and i not in self.weights]


def _depthwise_window(node: onnx.NodeProto, facts: GraphFacts) -> int:
    """A depthwise conv's window area (kernel height x width), 0 for any other node."""
    weight = facts.weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
    if weight is None or attrs_of(node).get("group", 1) <= 1 or weight[1] != 1:
        return 0
    return int(np.prod(weight[2:]))


def _slow_elementwise(node, facts):
    """A squeeze-excite gate: Mul(x, hardsigmoid(...)) -> float32 Mul, no Q/DQ on either input."""
    if node.op_type not in SLOW_INT8_ELEMENTWISE:
        return None
    floats = [s for s in facts.group_sources(node.name) if s is not None and facts.runs_float(s)]
    if floats:
        return (f"{node.op_type} of a float32 input ({facts.nodes[floats[0]].op_type}): ONNX Runtime's "
                f"QLinear{node.op_type} is slower than float32 {node.op_type} on such small tensors, before the "
                "QuantizeLinear that input would need")
    return None


def _large_depthwise(node, facts):
    """Conv(group=C, 5x5) -> float32 conv (3x3 stays int8: MobileNetV2's break even)."""
    window = _depthwise_window(node, facts)
    if window > LARGEST_INT8_DEPTHWISE_WINDOW:
        return f"a depthwise conv with a {window}-element window: ONNX Runtime's int8 depthwise kernel is slower there"
    return None


def _tiny_layer(node, facts):
    """Conv(96 -> 24) on a 1x1 map (2,304 MACs) in a 50M-MAC network -> float32."""
    macs = facts.macs(node) if node.op_type in COMPUTE_OPS else None
    if facts.writes_output(node.name):  # the Q/DQ pair in front of an output is dropped (int8.float_outputs):
        return None  # the network's last gemm writes float32 itself and costs only its input's QuantizeLinear
    if macs is not None and macs < MIN_INT8_MACS and macs < TINY_SHARE * facts.total_macs:
        return f"{macs} MACs: too few for int8 to repay its fixed cost and Q/DQ nodes"
    return None


def _int8_hard_swish(name, facts):
    """Whether a node is a hard-swish that ONNX Runtime runs in int8 after the rewrite (int8_hardswish): every
    node that reads it runs in int8, so a QuantizeLinear follows it."""
    readers = facts.readers.get(facts.nodes[name].output[0], [])
    return facts.nodes[name].op_type == "HardSwish" and bool(readers) and \
        not any(facts.runs_float(r.name) for r in readers)


def _dequantized_at_once(node, facts):
    """Conv(16 -> 96, 1x1) -> HardSwish -> float32 conv: 16 MACs per output element -> float32 conv (with an
    int8 conv after the hard-swish, the limit is that of the int8 hard-swish: MIN_MACS_PER_INT8_HARD_SWISH_OUTPUT)."""
    if node.op_type not in COMPUTE_OPS:
        return None
    readers = facts.group_readers(node.name)
    macs, outputs = facts.macs(node), facts.outputs_per_sample(node)
    if not readers or not all(facts.runs_float(r) for r in readers) or not macs or not outputs:
        return None
    int8_after = all(_int8_hard_swish(r, facts) for r in readers)
    if macs / outputs < (MIN_MACS_PER_INT8_HARD_SWISH_OUTPUT if int8_after else MIN_MACS_PER_DEQUANTIZED_OUTPUT):
        return (f"only float32 nodes read its output ({facts.nodes[readers[0]].op_type}) and it does "
                f"{macs // outputs} MACs per output element: int8 saves less than the Q/DQ of its output costs"
                + (" (or the int8 hard-swish after it)" if int8_after else ""))
    return None


def _float_island(node, facts):
    """float32 x -> Add(x, x) -> float32 Mul: the add -> float32 (it would only gain Q/DQ nodes)."""
    if node.op_type in COMPUTE_OPS:
        return None
    sources, readers = facts.group_sources(node.name), facts.group_readers(node.name)
    if sources and all(s is not None and facts.runs_float(s) for s in sources) and \
            all(facts.runs_float(r) for r in readers):
        return "no conv/gemm and only float32 nodes around it: its int8 kernel would only add Q/DQ nodes"
    return None


# runtime -> rules, each (node, facts) -> why the group stays float32, or None
PLACEMENT_RULES = {
    "onnxruntime-cpu": (_slow_elementwise, _large_depthwise, _tiny_layer, _dequantized_at_once, _float_island),
    "openvino": (),
    "tensorrt": (),
}
RUNTIMES = tuple(PLACEMENT_RULES)


def quantizable_ops() -> set[str]:
    """The op types ONNX Runtime's quantizer gives an int8 kernel (its QDQ and QLinear operator registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QDQRegistry) | set(QLinearOpsRegistry)


def slower_in_int8(model: onnx.ModelProto, groups: dict[str, list[str]], runtime: str | None = "onnxruntime-cpu",
                   quantizable=None) -> dict[str, str]:
    """{group head: why} for the layer groups that `runtime` runs faster in float32 than in int8 (PLACEMENT_RULES),
    applied until no more groups change; none for runtime None (every group with an int8 kernel in int8).
    `quantizable`: the op types with an int8 kernel (default: those of ONNX Runtime's quantizer registry)."""
    if runtime is None:
        return {}
    rules = PLACEMENT_RULES.get(runtime)
    if rules is None:
        raise ValueError(f"unknown int8 runtime '{runtime}'; known: {', '.join(RUNTIMES)}")
    if not rules or not groups:
        return {}
    facts = GraphFacts(model, groups, frozenset(quantizable if quantizable is not None else quantizable_ops()))
    why: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for head in groups:
            if head in facts.floats:
                continue
            reason = next((r for r in (rule(facts.nodes[head], facts) for rule in rules) if r), None)
            if reason:
                why[head] = reason
                facts.floats.add(head)
                changed = True
    return why
