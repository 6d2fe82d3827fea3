"""Float16 models: convert an emitted float32 ONNX model's weights and compute to float16.

The conversion runs on the ONNX model, after the passes: folding (batch norm
into conv, ...) happens first in float32/float64 on the LayerGraph, and only
the folded weights are rounded to float16. What changes:

- every float32 initializer becomes float16, except those feeding an input
  that the ONNX operator fixes to float32 (Resize `scales`); an initializer
  wanted in both types is duplicated;
- float32 graph inputs and outputs become float16, or, with
  `keep_io_fp32=True`, stay float32 with a Cast node after each input and
  before each output, so that callers keep feeding and reading float32;
- float tensor attributes (Constant, ConstantOfShape) and Cast targets follow.

Weights are checked as they are rounded: a value with |w| > 65504 does not fit
float16 and is clamped to +-65504 (one warning line per weight); a value
below 2**-14 (6.1e-5) in magnitude becomes subnormal, and below 2**-25 it
flushes to zero. Almost every weight tensor has a few values that small, and
they matter little when the tensor's other values are large: a weight is warned
about when it has subnormal or zeroed values AND its float16 copy's relative
error ||w16 - w|| / ||w|| exceeds SUBNORMAL_WARN_ERROR (1e-3, several times the
about 2.8e-4 that rounding normal values costs); the others are counted in one note.

Some execution providers lack float16 kernels for some operators. ONNX Runtime's
CPU provider inserts float32 casts around most of them itself; where a session
still fails with "Could not find an implementation for OP", `to_fp16` with a
`probe_provider` keeps every node of that op type in float32 (Cast nodes
around it) and tries again, and says so in the report's notes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cnncomp.errors import CnnError

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0 ** -14  # below this |w| is subnormal in float16
FP16_MIN_SUBNORMAL = 2.0 ** -24  # |w| < half of this rounds to zero
SUBNORMAL_WARN_ERROR = 1e-3  # warn about underflow when the float16 copy's relative L2 error exceeds this
MAX_PROBES = 8  # session attempts when finding ops without float16 kernels

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
_NOT_IMPLEMENTED = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")


@dataclass
class WeightIssue:
    """How rounding one weight tensor to float16 went wrong."""

    name: str
    size: int
    overflow: int  # values with |w| > 65504 (clamped)
    max_abs: float
    subnormal: int  # nonzero values that become subnormal (still nonzero)
    zeroed: int  # nonzero values that round to zero
    nonzero: int
    rel_err: float = 0.0  # ||fp16(w) - w|| / ||w||

    @property
    def underflow_matters(self) -> bool:
        return bool(self.subnormal + self.zeroed) and self.rel_err > SUBNORMAL_WARN_ERROR

    def warnings(self) -> list[str]:
        out = []
        if self.overflow:
            out.append(f"float16: weight '{self.name}': {self.overflow} of {self.size} values overflow float16 "
                       f"(|w| up to {self.max_abs:.4g} > {FP16_MAX:g}); clamped to +-{FP16_MAX:g}")
        if self.underflow_matters:
            out.append(f"float16: weight '{self.name}': {self.subnormal + self.zeroed} of {self.nonzero} nonzero "
                       f"values turn subnormal (|w| < {FP16_MIN_NORMAL:.3g})"
                       + (f", {self.zeroed} of them zero" if self.zeroed else "")
                       + f"; the float16 copy is off by {self.rel_err:.2g} (relative L2)")
        return out


@dataclass
class Fp16Report:
    """What the conversion did: per-weight warnings, notes, nodes kept in float32."""

    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    issues: list[WeightIssue] = field(default_factory=list)
    fp32_ops: list[str] = field(default_factory=list)  # op types kept in float32
    fp32_nodes: list[str] = field(default_factory=list)
    converted: int = 0  # initializers converted
    keep_io_fp32: bool = False


def check_weight(name: str, w: np.ndarray) -> WeightIssue:
    """Overflow and underflow statistics of one float32 weight rounded to float16."""
    a = np.abs(w.astype(np.float64, copy=False))
    nonzero = a > 0
    over = a > FP16_MAX
    small = nonzero & (a < FP16_MIN_NORMAL)
    zeroed = nonzero & (a < FP16_MIN_SUBNORMAL / 2)
    finite = np.isfinite(a)
    exact = w.astype(np.float64)[finite]
    norm = float(np.linalg.norm(exact))
    rel = float(np.linalg.norm(to_float16_array(w)[finite].astype(np.float64) - exact)) / norm if norm > 0 else 0.0
    return WeightIssue(name, int(w.size), int(over.sum()), float(a.max()) if a.size else 0.0,
                       int(small.sum() - zeroed.sum()), int(zeroed.sum()), int(nonzero.sum()), rel)


def to_float16_array(w: np.ndarray) -> np.ndarray:
    """Round to float16, clamping values beyond the float16 range to +-65504 (not to infinity)."""
    finite = np.isfinite(w)
    clipped = np.where(finite, np.clip(w, -FP16_MAX, FP16_MAX), w)
    return clipped.astype(np.float16)


# ---- the conversion ---------------------------------------------------------------


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def _schema(node: onnx.NodeProto, opset: int):
    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None


def _formal(params, i: int):
    if not params:
        return None
    if i < len(params):
        return params[i]
    last = params[-1]
    return last if last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic else None


def _follows_float_type(schema, param) -> bool:
    """Whether a formal input/output takes its element type from a type variable that allows float16."""
    if param is None:
        return True
    constraints = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    allowed = constraints.get(param.type_str)
    if allowed is None:  # a literal type, e.g. tensor(float) for Resize scales
        return "float16" in param.type_str
    return "tensor(float16)" in allowed


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every tensor of the model (by ONNX shape inference)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True)
    except Exception as exc:  # an invalid model: the emitter checks, so this is not expected
        raise CnnError(f"float16 conversion: ONNX shape inference failed: {exc}") from None
    types = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


def convert_fp16(model: onnx.ModelProto, keep_io_fp32: bool = False, fp32_ops=(),
                 report: Fp16Report | None = None) -> tuple[onnx.ModelProto, Fp16Report]:
    """A float16 copy of a float32 model (see the module doc); nodes of `fp32_ops` stay float32."""
    report = report or Fp16Report()
    report.keep_io_fp32 = keep_io_fp32
    fp32_ops = set(fp32_ops)
    if any(g.op_type in ("If", "Loop", "Scan") for g in model.graph.node):
        raise CnnError("float16 conversion does not handle models with subgraphs (If, Loop, Scan)")
    types = _elem_types(model)
    opset = _opset(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    taken = set(types) | {o for n in g.node for o in n.output} | {i for n in g.node for i in n.input}

    def fresh(hint: str) -> str:
        name, k = hint, 1
        while name in taken:
            name, k = f"{hint}_{k}", k + 1
        taken.add(name)
        return name

    # 1. Nodes: which float32 initializers are read as float32 (fixed-type inputs, nodes kept in
    #    float32) and which as float16; casts where a computed tensor meets a consumer of the other type.
    want32: set[str] = set()
    want16: set[str] = set()
    pending: list[onnx.NodeProto] = []  # casts to insert before the node being processed
    cast_cache: dict[tuple[str, int], str] = {}
    as16: dict[str, str] = {}  # original tensor -> the name of its float16 value, where not the original
    as32: dict[str, str] = {}  # original tensor -> the name of a float32 value of it, where one exists

    def cast(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in cast_cache:
            out = fresh(f"{tensor}/{'fp32' if to == FLOAT else 'fp16'}")
            pending.append(helper.make_node("Cast", [tensor], [out], name=fresh(f"{out}/cast"), to=to))
            cast_cache[key] = out
        return cast_cache[key]

    if keep_io_fp32:
        for vi in g.input:
            if types.get(vi.name) == FLOAT and vi.name not in inits:
                as16[vi.name] = cast(vi.name, FLOAT16)
                as32[vi.name] = vi.name
    out_names = {o.name for o in g.output}
    body: list[onnx.NodeProto] = []
    for node in g.node:
        schema = _schema(node, opset)
        keep32 = node.op_type in fp32_ops
        if keep32:
            report.fp32_nodes.append(node.name or node.output[0])
        for i, t in enumerate(node.input):
            if not t or types.get(t) != FLOAT:
                continue
            param = _formal(schema.inputs, i) if schema else None
            wants32 = keep32 or (schema is not None and not _follows_float_type(schema, param))
            if t in inits:
                (want32 if wants32 else want16).add(t)
            elif wants32:
                node.input[i] = as32.get(t) or cast(as16.get(t, t), FLOAT)
            else:
                node.input[i] = as16.get(t, t)
        if not keep32:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(to_float16_array(numpy_helper.to_array(attr.t)),
                                                            attr.t.name))
                if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
                    attr.i = FLOAT16
        body.extend(pending)
        pending.clear()
        body.append(node)
        for j, o in enumerate(node.output):
            if not o or types.get(o) != FLOAT:
                continue
            param = _formal(schema.outputs, j) if schema else None
            makes32 = keep32 or (schema is not None and not _follows_float_type(schema, param))
            io32 = keep_io_fp32 and o in out_names
            if makes32 and io32:
                as32[o] = o
                as16[o] = cast(o, FLOAT16)
            elif makes32:
                inner = fresh(f"{o}/fp32")
                node.output[j] = inner
                pending.append(helper.make_node("Cast", [inner], [o], name=fresh(f"{o}/cast"), to=FLOAT16))
                as32[o] = inner
            elif io32:
                inner = fresh(f"{o}/fp16")
                node.output[j] = inner
                pending.append(helper.make_node("Cast", [inner], [o], name=fresh(f"{o}/cast"), to=FLOAT))
                as16[o] = inner
                as32[o] = o
        body.extend(pending)
        pending.clear()

    # 2. Initializers: float16 (clamped and checked), float32 where read as float32, both when shared.
    rename16: dict[str, str] = {}
    for name, t in list(inits.items()):
        if t.data_type != FLOAT:
            continue
        if name not in want16 and name not in want32:
            want16.add(name)  # an unused or graph-output initializer: convert it too
        w = numpy_helper.to_array(t)
        if name in want16:
            issue = check_weight(name, w)
            if issue.overflow or issue.subnormal or issue.zeroed:
                report.issues.append(issue)
                report.warnings += issue.warnings()
            target = name
            if name in want32:  # read both ways: keep this one float32, add a float16 copy
                target = fresh(f"{name}/fp16")
                rename16[name] = target
                g.initializer.append(numpy_helper.from_array(to_float16_array(w), target))
            else:
                t.CopyFrom(numpy_helper.from_array(to_float16_array(w), name))
            report.converted += 1
    if rename16:
        for node in body:
            schema = _schema(node, opset)
            if node.op_type in fp32_ops:
                continue
            for i, t in enumerate(node.input):
                if t in rename16:
                    param = _formal(schema.inputs, i) if schema else None
                    if schema is None or _follows_float_type(schema, param):
                        node.input[i] = rename16[t]

    # 3. Graph inputs, outputs and value_info.
    for vi in list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type == FLOAT and not keep_io_fp32:
            vi.type.tensor_type.elem_type = FLOAT16
    for vi in g.value_info:
        if vi.type.tensor_type.elem_type == FLOAT:
            vi.type.tensor_type.elem_type = FLOAT16
    del g.node[:]
    g.node.extend(body)
    if fp32_ops:
        ops = sorted(fp32_ops)
        report.fp32_ops = ops
        report.notes.append(f"kept {len(report.fp32_nodes)} node(s) of {', '.join(ops)} in float32, with Cast nodes "
                            "around them (no float16 kernel for them on the provider)")
    _summary_note(report)
    props = {p.key: p.value for p in m.metadata_props}
    props["precision"] = "fp16" + (" (float32 inputs and outputs)" if keep_io_fp32 else "")
    del m.metadata_props[:]
    helper.set_model_props(m, props)
    return m, report


def _summary_note(report: Fp16Report) -> None:
    quiet = [i for i in report.issues if not i.overflow and not i.underflow_matters]
    if quiet:
        total = sum(i.subnormal + i.zeroed for i in quiet)
        worst = max(i.rel_err for i in quiet)
        report.notes.append(f"{len(quiet)} other weight(s) have {total} tiny values in all that turn subnormal or "
                            f"zero in float16; harmless there (relative error of each float16 copy <= {worst:.2g})")


# ---- finding ops the provider cannot run in float16 ---------------------------------


def missing_kernel(message: str) -> str | None:
    """The op type in ONNX Runtime's 'Could not find an implementation for OP(V) node' message, if any."""
    m = _NOT_IMPLEMENTED.search(message)
    return m.group(1) if m else None


def _try_session(model: onnx.ModelProto, provider: str) -> str | None:
    """None when ONNX Runtime builds a session for the model, else its error message."""
    import onnxruntime as ort

    from cnncomp.run.session import resolve_providers

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=resolve_providers(provider, quiet=True))
    except CnnError:
        raise
    except Exception as exc:
        return str(exc)
    return None


def to_fp16(model: onnx.ModelProto, keep_io_fp32: bool = False, fp32_ops=(),
            probe_provider: str | None = None) -> tuple[onnx.ModelProto, Fp16Report]:
    """Convert to float16; with `probe_provider`, keep in float32 the ops that provider has no float16 kernel for."""
    from cnncomp.emit.onnx import check_onnx

    ops = set(fp32_ops)
    for _ in range(MAX_PROBES):
        converted, report = convert_fp16(model, keep_io_fp32, ops)
        check_onnx(converted)
        if probe_provider is None:
            return converted, report
        error = _try_session(converted, probe_provider)
        if error is None:
            return converted, report
        op = missing_kernel(error)
        if op is None or op in ops or op == "Cast":
            raise CnnError(f"ONNX Runtime ({probe_provider}) cannot load the float16 model: "
                           f"{error.strip().splitlines()[0]}")
        ops.add(op)
    raise CnnError(f"ONNX Runtime ({probe_provider}) lacks float16 kernels for too many ops "
                   f"({', '.join(sorted(ops))}); run the model in float32")


def model_precision(model: onnx.ModelProto) -> str:
    """'fp16' when the model's float initializers are float16, else 'fp32'."""
    kinds = {t.data_type for t in model.graph.initializer if t.data_type in (FLOAT, FLOAT16)}
    return "fp16" if kinds == {FLOAT16} or (FLOAT16 in kinds and FLOAT not in kinds) else "fp32"


def cast_feeds(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs cast to the element types the model's graph inputs declare (float16 or float32)."""
    np_of = {FLOAT: np.float32, FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}
    out = dict(feeds)
    for vi in model.graph.input:
        want = np_of.get(vi.type.tensor_type.elem_type)
        if want is not None and vi.name in out and out[vi.name].dtype != want:
            out[vi.name] = out[vi.name].astype(want)
    return out


def fp16_graph(graph):
    """A copy of a LayerGraph whose float32 layers say float16: the graph a float16 model was made from
    (for per-layer checks, which declare each layer's tensor with the layer's dtype)."""
    view = graph.copy()
    for layer in view.layers():
        if layer.dtype == "float32":
            layer.dtype = "float16"
    return view


def fp16_note(atol=None, rtol=None) -> str:
    """What a float16 check is judged by, in words (for verify reports)."""
    from cnncomp.verification.tolerances import DEFAULT_TOLERANCES

    unit, rel = DEFAULT_TOLERANCES["fp16"]
    if atol is None and rtol is None:
        rule = f"the float16 tolerances: atol = {unit:g} * max|reference|, rtol = {rel:g}"
    else:
        rule = "the given --atol/--rtol (float16 defaults for the others)"
    return f"float16 model (weights and compute converted after the passes), judged by {rule}"


def log_report(report: Fp16Report, write) -> None:
    """Write the conversion's warnings and notes, one line each (`write` is e.g. sys.stderr.write)."""
    for w in report.warnings:
        write(f"warning: {w}\n")
    for n in report.notes:
        write(f"note: float16: {n}\n")

