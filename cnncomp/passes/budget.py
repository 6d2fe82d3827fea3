"""The budget engine: one way to choose approximations under an end-to-end error budget.

Two searches trade accuracy for speed under `--max-error`: `-O3`'s per-layer rewrites
(passes/search.py) and int8's float32 fallback (precision/int8.py). Both use this module:

- the samples: `split_held_out` holds the last quarter of the calibration samples (at least one
  batch) out of the search, and `batches` walks samples a fixed batch at a time;
- the choices: `cheapest_within` (the cheapest of a layer's candidate settings whose error fits,
  -O3) and `fewest_within` (the fewest changes that bring the error within the budget: int8's layers
  kept in float32, and -O3's back-off, rewrites undone from the last kept);
- the promise: `BudgetReport`, the error the search chose on and the error of the final model on
  the held-out samples, against the budget.

`--max-error` means the same for both: the relative L2 error ||y - y_ref|| / ||y_ref|| over every
output, against the float64 reference of the unoptimized network, on the held-out samples; a model
over it there is not what the search returns (it backs off until the held-out error fits).

The engine measures nothing itself: each search hands it an `error_of` function (its meter, from
verification/meters.py, wired by the pipeline) and, for -O3 --autotune, an `accept` test (timing,
from run/timing.py). So passes/ stays below run/ and verification/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from cnncomp.errors import CnnError

DEFAULT_MAX_ERROR = 0.01  # relative L2 error budget of approximations (-O3's rewrites, int8's fallback)
# a search that makes many choices on a few samples ends close to its target, and the error on other inputs
# differs: on 2-sample sets of seeded inputs (ResNet-18, width 8, 0.01) by up to 16%, less for larger budgets.
# -O3 therefore aims at this share of the budget, when it chooses and when it checks the held-out samples,
# and keeps the rest for inputs it has not seen
SEARCH_SHARE = 0.9


# ---- the samples -----------------------------------------------------------------------------------------


def split_held_out(feeds: dict[str, np.ndarray], batch: int = 1) -> tuple[dict, dict, list[str]]:
    """(search samples, held-out samples, warnings): the last quarter (at least one batch) is held out."""
    count = len(next(iter(feeds.values())))
    if count % batch:
        raise CnnError(f"the calibration data has {count} samples; the network's fixed batch of {batch} needs "
                       "a multiple of it")
    if count < 2 * batch:
        return feeds, feeds, ["one calibration sample: the error is measured on the sample the search used "
                              "(give two or more to hold some out)"]
    held = max(batch, count // 4 // batch * batch)
    return ({k: v[:count - held] for k, v in feeds.items()}, {k: v[count - held:] for k, v in feeds.items()}, [])


def batches(feeds: dict[str, np.ndarray], batch: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Yield {input: samples[i:i+batch]} over the samples (differently sized samples, a SampleList, one
    size per batch)."""
    from cnncomp.inputs import stack_samples

    count = len(next(iter(feeds.values())))
    for start in range(0, count, batch):
        yield {k: stack_samples(v[start:start + batch]) for k, v in feeds.items()}


# ---- the choices -----------------------------------------------------------------------------------------


def cheapest_within(costs: Sequence[float], families: Sequence[str], error_of: Callable[[int], float],
                    budget: float, accept: Callable[[int], bool] | None = None) -> tuple[int, float] | None:
    """(index, error) of the cheapest candidate whose error is within `budget` and that `accept` takes, or None.

    Candidates come in families (one rewrite at several ranks) whose error falls as their cost grows, so a
    family's dearest candidate (among those cheaper than the best found so far) is measured first: when it
    misses the budget, its cheaper members are not measured at all; when it fits, a binary search finds the
    family's cheapest member that fits. Every candidate returned was measured; a candidate that breaks the
    monotone assumption (measured over budget above its family's cheapest fit) is passed over, never kept.
    `error_of(i)` is called at most once per candidate; a NaN error never fits."""
    measured: dict[int, float] = {}

    def error(i: int) -> float:
        if i not in measured:
            measured[i] = error_of(i)
        return measured[i]

    def fits(i: int) -> bool:
        return error(i) <= budget  # NaN fails

    feasible: list[int] = []  # candidates assumed to fit (each family's cheapest fit and its dearer members)
    best = float("inf")  # the cost of the cheapest fit so far: dearer candidates need no measuring
    for family in dict.fromkeys(families):
        members = sorted((i for i in range(len(costs)) if families[i] == family and costs[i] < best),
                         key=lambda i: costs[i])
        if not members or not fits(members[-1]):
            continue
        lo, hi = 0, len(members) - 1  # members[hi] fits
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(members[mid]):
                hi = mid
            else:
                lo = mid + 1
        feasible += members[hi:]
        best = costs[members[hi]]
    for i in sorted(feasible, key=lambda i: costs[i]):
        if fits(i) and (accept is None or accept(i)):
            return i, measured[i]
    return None


def fewest_within(count: int, error_of: Callable[[int], float], budget: float,
                  start: int = 1) -> tuple[int, float]:
    """(k, error) for the smallest k in [start, count] with error_of(k) <= budget, where k counts changes that
    each lower the error (layers kept in float32, rewrites undone) and error_of(count) is taken to fit.

    Errors are not exactly monotone in k, so a binary search's answer is checked and, if it misses, k grows
    one at a time until the error fits (or k reaches `count`). `error_of(k)` is called at most once per k."""
    tried: dict[int, float] = {}

    def error(k: int) -> float:
        if k not in tried:
            tried[k] = error_of(k)
        return tried[k]

    lo, hi = start, count
    while lo < hi:
        mid = (lo + hi) // 2
        if error(mid) <= budget:
            hi = mid
        else:
            lo = mid + 1
    k = lo
    while not error(k) <= budget and k < count:
        k += 1
    return k, error(k)


# ---- the promise -----------------------------------------------------------------------------------------


@dataclass
class BudgetReport:
    """What a budgeted search promised and kept: the error it chose on (`search_error`, on the search samples),
    the final model's error on the held-out samples, the budget, and what backing off undid."""

    what: str  # "-O3" or "int8"
    budget: float
    search_error: float
    held_out_error: float | None = None  # None: no held-out samples (a meter handed in without them)
    search_samples: int = 0
    held_out_samples: int = 0
    kept: int = 0  # rewrites kept (-O3) or layers changed
    undone: int = 0  # rewrites undone (after `kept`) by backing off to fit the held-out samples

    @property
    def ok(self) -> bool:
        error = self.search_error if self.held_out_error is None else self.held_out_error
        return error <= self.budget

    def summary(self) -> str:
        """One line: both errors against the budget, what was kept and undone."""
        def samples(count: int, which: str) -> str:
            return f"{count} {which} samples" if count else f"the {which} samples"

        line = f"{self.what}: relative L2 error {self.search_error:.3g} on {samples(self.search_samples, 'search')}"
        if self.held_out_error is not None:
            line += f", {self.held_out_error:.3g} on {samples(self.held_out_samples, 'held-out')}"
        line += f" (budget {self.budget:g}); {self.kept} rewrite{'s' if self.kept != 1 else ''} kept"
        if self.undone:
            line += f" ({self.undone} more undone to fit the held-out samples)"
        return line
