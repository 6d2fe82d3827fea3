"""Error meters: the relative L2 output error that the budget engine (passes/budget.py) judges.

Every meter compares against reference outputs of the unoptimized network on fixed samples and
returns ||y - y_ref|| / ||y_ref|| over every output (compare.relative_output_error).

- `OutputErrorMeter`: a LayerGraph run by the reference interpreter. -O3's search meter runs all in
  float32 (its reference too: the candidates' errors are 1e-3 and up, float32 rounding 1e-7) and
  reruns only what a trial changed (run/incremental.py); its final check on the held-out samples
  takes the reference in float64 (`reference_dtype`).
- `ModelErrorMeter`: an ONNX model run by ONNX Runtime (int8's QDQ models), against float64
  reference outputs computed once; with a task-metric plan (verification/metrics.py) also its budget
  error, normalised so that <= 1.0 fits (the worst over outputs of metric / threshold).
"""

from __future__ import annotations

import numpy as np

from cnncomp.ir.graph import LayerGraph


class OutputErrorMeter:
    """The network's relative L2 output error against the unoptimized graph on these inputs; the graph
    measured runs in float32, the reference in `reference_dtype` ("float64" or "float32"; computed once).

    Called as (graph, weights), it runs the whole graph. The -O3 search uses `error` and `commit`:
    `commit` keeps the current graph's layer outputs, and `error` reruns only the layers of a
    trial graph that differ from it (run/incremental.py), which gives the same error."""

    def __init__(self, ref_graph: LayerGraph, ref_weights: dict, feeds: dict, jobs: int = 1,
                 reference_dtype: str = "float64"):
        import torch

        from cnncomp.run.reference import run_reference

        from cnncomp.run.incremental import fastest_thread_count

        self.feeds, self.jobs = feeds, jobs
        self.threads = fastest_thread_count()  # one thread on a busy machine (run/incremental.py says why)
        with self._threads():
            self.reference = run_reference(ref_graph, ref_weights, feeds, dtype=getattr(torch, reference_dtype))
        self._incremental = None

    def _threads(self):
        from cnncomp.run.incremental import torch_threads

        return torch_threads(self.threads)

    def __call__(self, graph: LayerGraph, weights: dict) -> float:
        from cnncomp.run.reference import run_reference
        from cnncomp.verification.compare import relative_output_error

        with self._threads():
            return relative_output_error(run_reference(graph, weights, self.feeds), self.reference)

    def commit(self, graph: LayerGraph, weights: dict) -> None:
        from cnncomp.run.incremental import IncrementalReference

        with self._threads():
            if self._incremental is None:
                self._incremental = IncrementalReference(graph, weights, self.feeds)
            else:
                self._incremental.commit(graph, weights)

    def error(self, graph: LayerGraph, weights: dict, layer: str | None = None) -> float:
        """The error of a trial graph, rerunning only what differs from the last committed graph
        (`layer`, the rewritten one, is a hint this meter does not need: it finds the changes)."""
        from cnncomp.verification.compare import relative_output_error

        if self._incremental is None:
            return self(graph, weights)
        with self._threads():
            return relative_output_error(self._incremental.run(graph, weights), self.reference)

    def errors(self, trials: list[tuple]) -> list[float]:
        """The errors of several trial graphs, (graph, weights, layer) each, measured in `jobs` forked
        processes (run/parallel.py), which inherit the trials and the committed layer outputs."""
        from cnncomp.run.parallel import forked_map

        threads, self.threads = self.threads, 1  # each worker computes on one thread (run/parallel.py)
        try:
            return forked_map(lambda i: self.error(*trials[i]), len(trials), self.jobs)
        finally:
            self.threads = threads


class ModelErrorMeter:
    """An ONNX model's relative output error under ONNX Runtime (CPU) against fixed reference outputs,
    run `batch` samples at a time for a network with a fixed batch dim (None: all at once); `plan` (a
    metrics.MetricPlan) judges each output by its task metric for `budget_error`."""

    REMEMBERED = 4  # the outputs of the latest models run, by their bytes' digest

    def __init__(self, feeds: dict[str, np.ndarray], reference: dict[str, np.ndarray], batch: int | None = None,
                 plan=None):
        self.feeds, self.reference, self.batch, self.plan = feeds, reference, batch, plan
        self._remembered: dict[bytes, dict[str, np.ndarray]] = {}

    def outputs(self, model) -> dict[str, np.ndarray]:
        """The model's outputs on the samples. A model run before (the same bytes; int8's search asks again for
        the whole-int8 model it measured first, when it keeps it) is not run again: on ResNet-50 a session and a
        run of 4 samples, 0.4 s."""
        import copy
        import hashlib

        from cnncomp.passes.budget import batches
        from cnncomp.run.session import Session

        from cnncomp.inputs import collate, is_mixed

        data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
        key = hashlib.blake2b(data, digest_size=16).digest() if isinstance(data, bytes) else None
        if key in self._remembered:  # copies: a caller may change what it got
            return copy.deepcopy(self._remembered[key])
        session = Session(data, "cpu", quiet=True)
        if self.batch is None and not is_mixed(self.feeds):
            outputs = session.run(self.feeds, list(self.reference))
        else:
            parts = [session.run(chunk, list(self.reference)) for chunk in batches(self.feeds, self.batch or 1)]
            outputs = {name: collate([p[name] for p in parts]) for name in self.reference}
        if key is not None:
            self._remembered[key] = copy.deepcopy(outputs)
            while len(self._remembered) > self.REMEMBERED:
                self._remembered.pop(next(iter(self._remembered)))
        return outputs

    def error(self, model, outputs: dict | None = None) -> float:
        """The relative L2 error over all samples (differently sized ones taken together, flattened), of the model
        or of its `outputs`, already run."""
        from cnncomp.verification.compare import relative_output_error

        outputs = outputs if outputs is not None else self.outputs(model)
        return relative_output_error(_flattened(outputs), _flattened(self.reference))

    def budget_error(self, model, outputs: dict | None = None) -> float:
        """The plan's budget error of the model (or of its `outputs`, already run): <= 1.0 fits, NaN never does;
        with rel-l2 at --max-error for every output, error(model) / max_error."""
        if self.plan is None:
            raise ValueError("budget_error needs a metric plan (ModelErrorMeter(..., plan=...))")
        return self.plan.budget_error(self.reference, outputs if outputs is not None else self.outputs(model))


def _flattened(outputs: dict) -> dict:
    """Each output's values in one flat array: a SampleList of differently sized samples concatenated."""
    from cnncomp.inputs import SampleList

    return {name: np.concatenate([np.ravel(p) for p in value]) if isinstance(value, SampleList) else value
            for name, value in outputs.items()}
