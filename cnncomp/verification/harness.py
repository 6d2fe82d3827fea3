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
from cnncomp.inputs import bind_inputs
from cnncomp.ir.weights import nonfinite_weights
from cnncomp.ir.graph import LayerGraph
from cnncomp.ops.dims import evaluate, symbols_of
from cnncomp.run.sizes import MIN_CHECK_SIZE, batch_symbols, spatial_symbols, verification_sizes  # noqa: F401
from cnncomp.verification.compare import Comparison, compare
from cnncomp.verification.tolerances import DEFAULT_MAX_ERROR, DEFAULT_TOLERANCES, tolerance_for  # noqa: F401



@dataclass
class LayerCheck:
    layer: str
    reference_layer: str
    location: str
    comparison: Comparison


@dataclass
class SizeCheck:
    """The outputs compared at one value of the symbols (a dynamic model is checked at several)."""

    sizes: dict[str, int]
    outputs: dict[str, Comparison]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.outputs.values())

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.sizes.items())

    def to_json(self) -> dict:
        return {"sizes": dict(self.sizes), "ok": self.ok, "outputs": {k: v.to_json() for k, v in self.outputs.items()}}


@dataclass
class VerifyReport:
    """What `cnncomp verify` found: per-output errors and, with --per-layer, the first layer that diverges."""

    ok: bool
    passes: list[str]
    provider: str
    outputs: dict[str, Comparison]
    first_divergent_layer: str | None = None
    first_divergent_location: str | None = None
    first_divergent_compared_with: str | None = None  # the unoptimized layer whose output it was compared with
    layers: list[LayerCheck] = field(default_factory=list)
    precision: str = "fp32"
    notes: list[str] = field(default_factory=list)
    sizes: list[SizeCheck] = field(default_factory=list)  # every size checked (symbolic models), the first too
    details: dict = field(default_factory=dict)  # the precision's own report (int8: budget, metrics per output)

    def to_json(self) -> dict:
        return {"ok": self.ok, "passes": self.passes, "provider": self.provider, "precision": self.precision,
                "outputs": {k: v.to_json() for k, v in self.outputs.items()},
                "first_divergent_layer": self.first_divergent_layer,
                "first_divergent_location": self.first_divergent_location,
                "first_divergent_compared_with": self.first_divergent_compared_with,
                "layers": [{"layer": c.layer, "reference_layer": c.reference_layer, "location": c.location,
                            **c.comparison.to_json()} for c in self.layers],
                "sizes": [c.to_json() for c in self.sizes],
                "notes": self.notes, **({self.precision: self.details} if self.details else {})}

    def format(self) -> str:
        lines = [f"verify: {'ok' if self.ok else 'MISMATCH'} ({self.provider}, {self.precision}; passes: "
                 f"{', '.join(self.passes) or 'none'})"]
        if self.sizes:
            for check in self.sizes:
                lines.append(f"  at {check.label()}: {'ok' if check.ok else 'MISMATCH'}")
                lines += [f"    {name}: {c.describe()}" for name, c in check.outputs.items()]
        else:
            for name, c in self.outputs.items():
                lines.append(f"  {name}: {c.describe()}")
        if self.first_divergent_layer:
            compared = self.first_divergent_compared_with
            lines.append(f"  first divergent layer: {self.first_divergent_layer} ({self.first_divergent_location})"
                         + (f", compared with the output of {compared} in the unoptimized graph"
                            if compared and compared != self.first_divergent_layer else ""))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _apply_judge(judge, outputs: dict[str, Comparison], got: dict, reference: dict) -> None:
    """The task metric's verdict replaces the relative L2 budget's for the outputs `judge` covers."""
    if judge is None:
        return
    for name, (ok, words) in judge({k: got[k] for k in outputs}, {k: reference[k] for k in outputs}).items():
        if name in outputs:
            outputs[name].ok = ok and outputs[name].problem is None
            outputs[name].judged_by = words


def make_inputs(graph: LayerGraph, seed: int = 0, val_range: tuple[float, float] = (-1.0, 1.0),
                batch: int = 2, sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded uniform inputs for every graph input; a symbolic batch dim takes the size `batch`, the
    spatial symbols `sizes` (by default the smallest sizes their constraints and strides allow)."""
    rng = np.random.default_rng(seed)
    if sizes is None:
        sizes = verification_sizes(graph, batch, count=1)[0]
    out = {}
    for name in graph.inputs:
        layer = graph.layer(name)
        shape = tuple(d if isinstance(d, int) else evaluate(d, sizes) if symbols_of(d) <= set(sizes) else batch
                      for d in layer.shape)
        out[name] = rng.uniform(val_range[0], val_range[1], shape).astype(layer.dtype)
    return out


def sizes_to_check(graph: LayerGraph, shapes=(), defaults: bool = True, batch: int = 2) -> list[dict[str, int]]:
    """The sizes to check a model at: the default sizes of a model with symbolic spatial sizes (with
    `defaults`), then the symbols of every `--shape` (`{"x": (1, 3, 512, 512)}`)."""
    from cnncomp.frontend.cnn.symbols import named_shapes
    from cnncomp.run.reference import input_sizes

    wanted = verification_sizes(graph, batch) if defaults and spatial_symbols(graph) else []
    wanted += [input_sizes(graph, named_shapes(graph, given)) for given in shapes]
    out = []
    for sizes in wanted:
        if sizes not in out:
            out.append(sizes)
    return out


def refuse_nonfinite_weights(weights: dict) -> None:
    """A check against weights holding NaN or Inf proves nothing: refuse it, naming them."""
    bad = nonfinite_weights(weights)
    if bad:
        raise CnnError("cannot verify with weights that are not finite: " + "; ".join(bad))


def rewritten_layer(name: str, ref_graph: LayerGraph) -> str | None:
    """The spec's layer an optimized layer comes from: itself, or the layer a rewrite named it under
    (`conv1.2` of a bottleneck of `conv1`); None when there is none."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in ref_graph and ref_graph.layer(candidate).op != "input":
            return candidate
    return None


def with_all_layer_outputs(model, graph: LayerGraph):
    """A copy of an ONNX model that also outputs every layer's tensor (for --per-layer)."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    produced = {o for node in model.graph.node for o in node.output}
    existing = {o.name for o in model.graph.output}
    out_alias = dict(zip(graph.outputs, graph.output_names))
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    def seen_downstream(name: str) -> str:
        """In a QDQ (int8) model, the value after the tensor's QuantizeLinear -> DequantizeLinear pair: what the
        next layers read (the quantizer may have folded a Relu into that pair, leaving its name on the conv)."""
        for q in consumers.get(name, []):
            if q.op_type == "QuantizeLinear":
                dq = next((d for d in consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"), None)
                if dq is not None:
                    return dq.output[0]
        return name

    tensors = {}
    for layer in graph.layers():
        if layer.op == "input":
            continue
        name = layer.name if layer.name in produced else out_alias.get(layer.name)
        if name is None or name not in produced:
            continue
        name = seen_downstream(name)
        tensors[layer.name] = name
        if name not in existing:
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(layer.dtype))
            model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
            existing.add(name)
    return model, tensors


def verify(ref_graph: LayerGraph, ref_weights: dict, model, opt_graph: LayerGraph, *, provider: str = "cpu",
           inputs: dict[str, np.ndarray] | None = None, seed: int = 0, val_range=(-1.0, 1.0), batch: int = 2,
           atol=None, rtol=None, per_layer: bool = False, precision: str = "fp32", session_options=None,
           reference_outputs: dict | None = None, max_error: float | None = None,
           tolerances: tuple[float, float] | None = None, judged_by_budget: bool = False,
           runtime_settings: dict | None = None, sizes: list[dict[str, int]] = (),
           judge=None) -> tuple[VerifyReport, dict, dict]:
    """Run `model` (emitted from opt_graph) and the reference of ref_graph; return (report, inputs, outputs).

    `precision` names the model's precision; its registry entry (precision/convert.py) gives the default
    `tolerances` and whether it is `judged_by_budget`. When approximate rewrites ran
    (opt_graph.meta["approximate"]) or the precision is judged so, outputs are judged by their relative L2
    error against `max_error` (default DEFAULT_MAX_ERROR) instead of element-wise tolerances. A model with
    symbolic sizes is also run at each of `sizes` (values of the symbols) on fresh seeded inputs; the report
    lists every size checked. `judge` (outputs, reference) -> {output: (ok, words)} judges the outputs a task
    metric covers (int8's top1 for class scores, verification/metrics.py) instead of the relative L2 budget."""
    from cnncomp.run.reference import run_reference
    from cnncomp.run.runtime import open_session

    import torch

    feeds = bind_inputs(inputs, ref_graph.inputs) if inputs is not None else \
        make_inputs(ref_graph, seed, val_range, batch)
    refuse_nonfinite_weights(ref_weights)
    for name in ref_graph.inputs:
        if name not in feeds:
            raise CnnError(f"the inputs have no '{name}' (they have {', '.join(feeds) or 'nothing'})")
    if per_layer:
        ref_out, ref_layers = run_reference(ref_graph, ref_weights, feeds, dtype=torch.float64, capture=True)
        model, tensors = with_all_layer_outputs(model, opt_graph)
    else:
        ref_out = reference_outputs or run_reference(ref_graph, ref_weights, feeds, dtype=torch.float64)
    session = open_session(model, provider, runtime_settings, precision, **(session_options or {}))
    got = session.run({k: v for k, v in feeds.items() if k in session.input_names})
    outputs = {}
    budget = None
    if opt_graph.meta.get("approximate") or judged_by_budget:
        budget = DEFAULT_MAX_ERROR if max_error is None else max_error
    for name in ref_graph.output_names:
        outputs[name] = compare(got[name], ref_out[name], tolerance_for(name, atol), tolerance_for(name, rtol),
                                precision, budget, tolerances)
    _apply_judge(judge, outputs, got, ref_out)
    report = VerifyReport(all(c.ok for c in outputs.values()), list(opt_graph.meta.get("passes", [])),
                          session.provider, outputs, precision=precision)
    if sizes or spatial_symbols(ref_graph):
        from cnncomp.run.reference import input_sizes

        first = input_sizes(ref_graph, {n: a.shape for n, a in feeds.items() if n in ref_graph.inputs})
        report.sizes.append(SizeCheck(first, outputs))
        sizes = [size for size in sizes if size != first]
    for k, size in enumerate(sizes, 1):
        more = make_inputs(ref_graph, seed + k, val_range, batch, size)
        more = {n: a.astype(feeds[n].dtype) if n in feeds else a for n, a in more.items()}
        more_ref = run_reference(ref_graph, ref_weights, more, dtype=torch.float64)
        more_got = session.run({n: v for n, v in more.items() if n in session.input_names})
        report.sizes.append(SizeCheck(size, {
            name: compare(more_got[name], more_ref[name], tolerance_for(name, atol), tolerance_for(name, rtol),
                          precision, budget, tolerances) for name in ref_graph.output_names}))
        _apply_judge(judge, report.sizes[-1].outputs, more_got, more_ref)
    report.ok = report.ok and all(c.ok for c in report.sizes)
    if budget is not None:
        by_metric = [name for name, c in outputs.items() if c.judged_by]
        report.notes.append(f"{precision if judged_by_budget else 'approximate rewrites ran'}: outputs are judged "
                            f"by relative L2 error <= {budget:g}" + (
                                f", except {', '.join(by_metric)}, judged by a task metric" if by_metric else ""))
    if per_layer:
        from cnncomp.progress import progress

        aliases = opt_graph.meta.get("aliases", {})
        for layer in progress(list(opt_graph.layers()), label="compare layers"):
            if layer.name not in tensors:
                continue
            ref_name = aliases.get(layer.name, layer.name)
            if ref_name not in ref_layers:
                continue
            c = compare(got[tensors[layer.name]], ref_layers[ref_name], None, None, precision, budget, tolerances)
            report.layers.append(LayerCheck(layer.name, ref_name, ref_graph.layer(ref_name).where, c))
            if not c.ok and report.first_divergent_layer is None:
                blamed = rewritten_layer(layer.name, ref_graph) or ref_name
                report.first_divergent_layer = blamed
                report.first_divergent_location = ref_graph.layer(blamed).where
                report.first_divergent_compared_with = ref_name
    return report, feeds, {k: got[k] for k in ref_graph.output_names}
