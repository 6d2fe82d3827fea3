"""Numeric verification: the emitted model under ONNX Runtime against the PyTorch reference.

Both run on the same seeded inputs and weights. The reference runs the
unoptimized graph in float64, so it is the ground truth for both the passes and
the float32 arithmetic of the runtime. An output agrees when every element obeys
|ort - ref| <= atol + rtol * |ref|. Unless given, atol scales with the output's
magnitude: atol = 1e-4 * max|ref| for float32 (1e-2 for float16) and rtol = 1e-3
(1e-2 for float16), so that a network with outputs near 1e3 is judged as one
with outputs near 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cnncomp.errors import CnnError
from cnncomp.ir.graph import LayerGraph

DEFAULT_MAX_ERROR = 0.01  # relative L2 error budget of approximate rewrites
DEFAULT_TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2)}  # (atol per unit of max|ref|, rtol)


@dataclass
class Comparison:
    """Error statistics of one tensor against its reference."""

    max_abs_err: float
    max_rel_err: float
    mean_abs_err: float
    median_abs_err: float
    p99_abs_err: float
    atol: float
    rtol: float
    ok: bool
    problem: str | None = None  # NaN/Inf or shape trouble, in words
    rel_l2_err: float = 0.0  # ||actual - ref|| / ||ref||
    max_error: float | None = None  # the budget it was judged by (approximate rewrites), else None

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("max_abs_err", "max_rel_err", "mean_abs_err", "median_abs_err",
                                              "p99_abs_err", "rel_l2_err", "atol", "rtol", "max_error", "ok",
                                              "problem")}

    def describe(self) -> str:
        rule = (f"relative L2 error {self.rel_l2_err:.3g} within budget {self.max_error:g}" if self.max_error is not None
                else f"atol {self.atol:.3g}, rtol {self.rtol:.3g}")
        return (f"max abs {self.max_abs_err:.3g}, max rel {self.max_rel_err:.3g}, mean abs {self.mean_abs_err:.3g}, "
                f"median abs {self.median_abs_err:.3g}, p99 abs {self.p99_abs_err:.3g}, rel L2 {self.rel_l2_err:.3g} "
                f"({rule}) {'ok' if self.ok else 'FAIL'}" + (f" [{self.problem}]" if self.problem else ""))


@dataclass
class LayerCheck:
    layer: str
    reference_layer: str
    location: str
    comparison: Comparison


@dataclass
class VerifyReport:
    """What `cnncomp verify` found: per-output errors and, with --per-layer, the first layer that diverges."""

    ok: bool
    passes: list[str]
    provider: str
    outputs: dict[str, Comparison]
    first_divergent_layer: str | None = None
    first_divergent_location: str | None = None
    layers: list[LayerCheck] = field(default_factory=list)
    precision: str = "fp32"
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ok": self.ok, "passes": self.passes, "provider": self.provider, "precision": self.precision,
                "outputs": {k: v.to_json() for k, v in self.outputs.items()},
                "first_divergent_layer": self.first_divergent_layer,
                "first_divergent_location": self.first_divergent_location,
                "layers": [{"layer": c.layer, "reference_layer": c.reference_layer, "location": c.location,
                            **c.comparison.to_json()} for c in self.layers],
                "notes": self.notes}

    def format(self) -> str:
        lines = [f"verify: {'ok' if self.ok else 'MISMATCH'} ({self.provider}, {self.precision}; passes: "
                 f"{', '.join(self.passes) or 'none'})"]
        for name, c in self.outputs.items():
            lines.append(f"  {name}: {c.describe()}")
        if self.first_divergent_layer:
            lines.append(f"  first divergent layer: {self.first_divergent_layer} ({self.first_divergent_location})")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def make_inputs(graph: LayerGraph, seed: int = 0, val_range: tuple[float, float] = (-1.0, 1.0),
                batch: int = 2) -> dict[str, np.ndarray]:
    """Seeded uniform inputs for every graph input; a symbolic dim takes the size `batch`."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in graph.inputs:
        layer = graph.layer(name)
        shape = tuple(d if isinstance(d, int) else batch for d in layer.shape)
        out[name] = rng.uniform(val_range[0], val_range[1], shape).astype(layer.dtype)
    return out


def compare(actual: np.ndarray, expected: np.ndarray, atol: float | None, rtol: float | None,
            precision: str = "fp32", max_error: float | None = None) -> Comparison:
    """Compare one tensor with its reference; tolerances default to the magnitude-scaled ones.

    With `max_error` (approximate rewrites) the tensor agrees when its relative L2 error is within it."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    atol_unit, default_rtol = DEFAULT_TOLERANCES[precision]
    scale = float(np.nanmax(np.abs(expected))) if expected.size and np.isfinite(expected).any() else 0.0
    atol = atol if atol is not None else atol_unit * max(scale, 1e-6)
    rtol = default_rtol if rtol is None else rtol
    if actual.shape != expected.shape:
        return Comparison(np.inf, np.inf, np.inf, np.inf, np.inf, atol, rtol, False,
                          f"shape {list(actual.shape)} differs from the reference's {list(expected.shape)}")
    problem = None
    bad_actual = ~np.isfinite(actual)
    bad_expected = ~np.isfinite(expected)
    if bad_actual.any() or bad_expected.any():
        if (bad_actual != bad_expected).any() or (actual[bad_actual] != expected[bad_actual]).any():
            problem = (f"{int(np.isnan(actual).sum())} NaN and {int(np.isinf(actual).sum())} Inf in the output, "
                       f"{int(np.isnan(expected).sum())} NaN and {int(np.isinf(expected).sum())} Inf in the reference")
    finite = np.isfinite(actual) & np.isfinite(expected)
    diff = np.abs(actual - expected)[finite] if finite.any() else np.zeros(1)
    ref = np.abs(expected)[finite] if finite.any() else np.ones(1)
    rel = diff / np.maximum(ref, 1e-12)
    rel_l2 = float(np.linalg.norm(diff) / max(float(np.linalg.norm(ref)), 1e-30))
    if max_error is not None:
        ok = problem is None and rel_l2 <= max_error
    else:
        ok = problem is None and bool(np.all(diff <= atol + rtol * ref))
    return Comparison(float(diff.max()), float(rel.max()), float(diff.mean()), float(np.median(diff)),
                      float(np.percentile(diff, 99)), float(atol), float(rtol), ok, problem, rel_l2, max_error)


def tolerance_for(name: str, given: dict[str, float] | float | None) -> float | None:
    """A tolerance from --atol/--rtol: one number for all outputs, or per output name."""
    if given is None or isinstance(given, float):
        return given
    return given.get(name, given.get("", None))


def with_all_layer_outputs(model, graph: LayerGraph):
    """A copy of an ONNX model that also outputs every layer's tensor (for --per-layer)."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    produced = {o for node in model.graph.node for o in node.output}
    existing = {o.name for o in model.graph.output}
    out_alias = dict(zip(graph.outputs, graph.output_names))
    tensors = {}
    for layer in graph.layers():
        if layer.op == "input":
            continue
        name = layer.name if layer.name in produced else out_alias.get(layer.name)
        if name is None or name not in produced:
            continue
        tensors[layer.name] = name
        if name not in existing:
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(layer.dtype))
            model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
            existing.add(name)
    return model, tensors


def verify(ref_graph: LayerGraph, ref_weights: dict, model, opt_graph: LayerGraph, *, provider: str = "cpu",
           inputs: dict[str, np.ndarray] | None = None, seed: int = 0, val_range=(-1.0, 1.0), batch: int = 2,
           atol=None, rtol=None, per_layer: bool = False, precision: str = "fp32", session_options=None,
           reference_outputs: dict | None = None, max_error: float | None = None) -> tuple[VerifyReport, dict, dict]:
    """Run `model` (emitted from opt_graph) and the reference of ref_graph; return (report, inputs, outputs).

    When approximate rewrites ran (opt_graph.meta["approximate"]), outputs are judged by their relative
    L2 error against `max_error` (default 0.01) instead of the float32 tolerances."""
    from cnncomp.backends.reference import run_reference
    from cnncomp.backends.runtime import Session

    import torch

    feeds = inputs if inputs is not None else make_inputs(ref_graph, seed, val_range, batch)
    for name in ref_graph.inputs:
        if name not in feeds:
            raise CnnError(f"the inputs have no '{name}' (they have {', '.join(feeds) or 'nothing'})")
    if per_layer:
        ref_out, ref_layers = run_reference(ref_graph, ref_weights, feeds, dtype=torch.float64, capture=True)
        model, tensors = with_all_layer_outputs(model, opt_graph)
    else:
        ref_out = reference_outputs or run_reference(ref_graph, ref_weights, feeds, dtype=torch.float64)
    session = Session(model, provider, **(session_options or {}))
    got = session.run({k: v for k, v in feeds.items() if k in session.input_names})
    outputs = {}
    budget = None
    if opt_graph.meta.get("approximate"):
        budget = DEFAULT_MAX_ERROR if max_error is None else max_error
    for name in ref_graph.output_names:
        outputs[name] = compare(got[name], ref_out[name], tolerance_for(name, atol), tolerance_for(name, rtol),
                                precision, budget)
    report = VerifyReport(all(c.ok for c in outputs.values()), list(opt_graph.meta.get("passes", [])),
                          session.provider, outputs, precision=precision)
    if budget is not None:
        report.notes.append(f"approximate rewrites ran: outputs are judged by relative L2 error <= {budget:g}")
    if per_layer:
        from cnncomp.progress import progress

        aliases = opt_graph.meta.get("aliases", {})
        for layer in progress(list(opt_graph.layers()), label="compare layers"):
            if layer.name not in tensors:
                continue
            ref_name = aliases.get(layer.name, layer.name)
            if ref_name not in ref_layers:
                continue
            c = compare(got[tensors[layer.name]], ref_layers[ref_name], None, None, precision,
                        budget if budget is not None else None)
            report.layers.append(LayerCheck(layer.name, ref_name, ref_graph.layer(ref_name).where, c))
            if not c.ok and report.first_divergent_layer is None:
                report.first_divergent_layer = ref_name
                report.first_divergent_location = ref_graph.layer(ref_name).where
    return report, feeds, {k: got[k] for k in ref_graph.output_names}
