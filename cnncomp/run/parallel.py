"""Forked worker processes for the per-layer searches (-O3's trial rewrites, int8's layer sensitivity).

The workers are forked after the work is set up, so they inherit it (graphs, weights, committed layer
outputs, a calibrated quantizer) instead of receiving pickled copies; each computes on one thread, so
that N workers use N cores rather than N times the session's pool.
"""

from __future__ import annotations

from collections.abc import Callable

_PENDING: Callable[[int], object] | None = None  # the function the forked workers call


def forked_map(function: Callable[[int], object], count: int, jobs: int = 1, label: str = "") -> list:
    """[function(i) for i in range(count)], in up to `jobs` forked processes (in this one when jobs is 1);
    with a `label`, a progress bar on standard error counts the results as they come."""
    from cnncomp.progress import progress

    if jobs <= 1 or count <= 1:
        indices = progress(range(count), label=label) if label else range(count)
        return [function(i) for i in indices]
    import multiprocessing

    global _PENDING
    _PENDING = function
    try:
        with multiprocessing.get_context("fork").Pool(min(jobs, count), _one_thread) as pool:
            results = pool.imap(_call_pending, range(count))
            return list(progress(results, total=count, label=label) if label else results)
    finally:
        _PENDING = None


def in_worker() -> bool:
    """Whether this process is one of forked_map's workers (they compute on one thread)."""
    return _WORKER


_WORKER = False


def _one_thread() -> None:
    import torch

    global _WORKER
    _WORKER = True
    torch.set_num_threads(1)


def _call_pending(index: int):
    return _PENDING(index)
