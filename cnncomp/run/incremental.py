"""Incremental reference runs, for -O3's search: rerun only the layers a trial rewrite changed.

The search tries many rewrites, each on a copy of the current graph that differs from it
only from the rewritten layer on. `IncrementalReference` keeps every layer's output for the
current graph (set by `commit`) and, for a trial graph, recomputes only the layers whose
computation differs: a layer reuses a kept output when it has the same name, op, attrs,
shape and inputs (by name, in slot order) as the layer that computed it, reads the same weights
(the very same arrays, which passes replace rather than write into, or arrays of the same
dtype, shape and values) and the very same input tensors (so every layer it reads was reused
from the same run). Everything downstream of a rewrite is therefore recomputed; the rest is not.
`commit` also reuses the last trial's outputs, so that committing the rewrite just measured
(which the pass manager redoes on the real graph, with fresh but equal arrays) reruns nothing.
The interpreter is `reference.run_layer`, the same code and dtype as `run_reference`, so the
outputs match a full run (the same torch kernels on the same tensors).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping

import numpy as np
import torch

from cnncomp.ir.weights import FLOAT_DTYPES
from cnncomp.ops.registry import all_ops
from cnncomp.run.reference import _feeds, run_layer


class IncrementalReference:
    """Runs graphs with the reference interpreter, reusing the committed graph's unchanged layers' outputs."""

    def __init__(self, graph, weights: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
                 dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self._feeds = _feeds(graph, inputs, dtype)
        # layer -> (signature, input tensors, output)
        self._kept: dict[str, tuple[tuple, tuple, torch.Tensor]] = {}
        self._trial: dict[str, tuple[tuple, tuple, torch.Tensor]] = {}  # the last run's recomputed layers
        self.recomputed = 0  # layers run by the last `run` or `commit` (for tests)
        self.commit(graph, weights)

    def run(self, graph, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{output name: array} for this graph, as `run_reference` returns it."""
        outputs, entries = self._run(graph, weights, (self._kept,))
        self._trial = {name: entries[name] for name in self._recomputed}
        return outputs

    def commit(self, graph, weights: Mapping[str, np.ndarray]) -> None:
        """Make this graph the one whose layer outputs are kept for reuse."""
        self._kept = self._run(graph, weights, (self._kept, self._trial))[1]
        self._trial = {}

    def _run(self, graph, weights, caches):
        ops = all_ops()
        values: dict[str, torch.Tensor] = {}
        entries: dict[str, tuple[tuple, tuple, torch.Tensor]] = {}
        tensors: dict[str, torch.Tensor] = {}

        def weight(layer: str, suffix: str) -> torch.Tensor:
            return tensors[f"{layer}.{suffix}"]

        self._recomputed = []
        with torch.no_grad():
            for layer in graph.layers():
                name = layer.name
                ins = graph.input_names(name)
                arrays = tuple(weights[f"{name}.{suffix}"] for suffix in layer.weights)
                signature = (layer.op, dict(layer.attrs), tuple(layer.shape), layer.dtype, tuple(ins),
                             tuple(layer.weights), arrays)
                inputs = tuple(values[u] for u in ins)
                kept = next((c[name] for c in caches if name in c and _same_inputs(c[name][1], inputs)
                             and _same(c[name][0], signature)), None)
                if kept is not None:
                    out = kept[2]
                elif layer.op == "input":
                    out = self._feeds[name]
                else:
                    for suffix, array in zip(layer.weights, arrays):
                        tensors[f"{name}.{suffix}"] = _tensor(array, self.dtype)
                    out = run_layer(ops, graph, layer, values, weight)
                    self._recomputed.append(name)
                values[name] = out
                entries[name] = (signature, inputs, out)
        self.recomputed = len(self._recomputed)
        outputs = {out: values[layer].numpy() for out, layer in zip(graph.output_names, graph.outputs)}
        return outputs, entries


def _array(value) -> np.ndarray:
    """A weight as a numpy array, as check_weights reads it (a torch tensor detached, bfloat16 as float32)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.to(torch.float32) if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)


def _tensor(value, dtype: torch.dtype) -> torch.Tensor:
    """A weight as `run_reference` converts it (check_weights' float32 for other floats, then `dtype`)."""
    array = _array(value)
    if array.dtype not in FLOAT_DTYPES:
        array = array.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def _same_inputs(old: tuple, new: tuple) -> bool:
    """The very same input tensors (an output computed afresh is a new tensor, even if equal)."""
    return len(old) == len(new) and all(a is b for a, b in zip(old, new))


def _same(old: tuple, new: tuple) -> bool:
    """Whether two layer signatures describe the same computation (the same weights: identical
    arrays, or equal ones of the same dtype and shape; NaN never compares equal, so it recomputes)."""
    *old_rest, old_arrays = old
    *new_rest, new_arrays = new
    try:
        if old_rest != new_rest:
            return False
    except (ValueError, TypeError):  # attrs holding arrays compare elementwise: call them different, and recompute
        return False
    return len(old_arrays) == len(new_arrays) and all(_same_array(a, b) for a, b in zip(old_arrays, new_arrays))


def _same_array(a, b) -> bool:
    if a is b:
        return True
    a, b = _array(a), _array(b)
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with `count` intra-op threads for torch, then restore the count it had."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fastest_thread_count(repeats: int = 3) -> int:
    """1 or torch's default thread count, whichever runs a mid-sized float32 conv faster right now.

    On a machine whose cores are busy with other work, torch's thread pool waits on its busiest thread at
    every op: a 64-channel 3x3 conv at 56x56 took 170 ms on 2 threads and 24 ms on one (2 cores at a load
    of 13); on an idle machine the pool is faster. The probe costs a few convs (milliseconds)."""
    default = torch.get_num_threads()
    if default == 1:
        return 1
    x, w = torch.randn(2, 64, 56, 56), torch.randn(64, 64, 3, 3)

    def seconds(count: int) -> float:
        with torch_threads(count):
            torch.conv2d(x, w, padding=1)
            start = time.perf_counter()
            for _ in range(repeats):
                torch.conv2d(x, w, padding=1)
            return time.perf_counter() - start

    return 1 if seconds(1) < seconds(default) else default
