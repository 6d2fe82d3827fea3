"""Comparing one tensor with its reference: error statistics, NaN/Inf, and the verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cnncomp.verification.tolerances import DEFAULT_TOLERANCES


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
    nonfinite: str | None = None  # NaN/Inf the output matched in position (and sign), in words
    judged_by: str | None = None  # a task metric's verdict in words (int8's top1 ...), which decided `ok`

    def to_json(self) -> dict:
        """Strict JSON: a statistic that is not finite (no finite element to compare) is null."""
        out = {k: getattr(self, k) for k in ("max_abs_err", "max_rel_err", "mean_abs_err", "median_abs_err",
                                             "p99_abs_err", "rel_l2_err", "atol", "rtol", "max_error", "ok",
                                             "problem", "nonfinite", "judged_by")}
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()}

    def describe(self) -> str:
        if self.judged_by is not None:
            rule = self.judged_by
        elif self.max_error is None:
            rule = f"atol {self.atol:.3g}, rtol {self.rtol:.3g}"
        else:
            verdict = "within" if self.rel_l2_err <= self.max_error else "exceeds"
            rule = f"relative L2 error {self.rel_l2_err:.3g} {verdict} budget {self.max_error:g}"
        return (f"max abs {self.max_abs_err:.3g}, max rel {self.max_rel_err:.3g}, mean abs {self.mean_abs_err:.3g}, "
                f"median abs {self.median_abs_err:.3g}, p99 abs {self.p99_abs_err:.3g}, rel L2 {self.rel_l2_err:.3g} "
                f"({rule}) {'ok' if self.ok else 'FAIL'}" + (f" [{self.problem}]" if self.problem else "")
                + (f" [{self.nonfinite}]" if self.nonfinite else ""))


def compare(actual: np.ndarray, expected: np.ndarray, atol: float | None, rtol: float | None,
            precision: str = "fp32", max_error: float | None = None,
            tolerances: tuple[float, float] | None = None) -> Comparison:
    """Compare one tensor with its reference; tolerances default to the magnitude-scaled ones of the precision
    (`tolerances`, as its registry entry declares them: atol per unit of max|ref|, rtol).

    With `max_error` (approximate rewrites) the tensor agrees when its relative L2 error is within it."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    atol_unit, default_rtol = tolerances or DEFAULT_TOLERANCES[precision]
    finite_expected = expected[np.isfinite(expected)]
    scale = float(np.abs(finite_expected).max()) if finite_expected.size else 0.0  # finite values only
    atol = atol if atol is not None else atol_unit * max(scale, 1e-6)
    rtol = default_rtol if rtol is None else rtol
    if actual.shape != expected.shape:
        return Comparison(np.inf, np.inf, np.inf, np.inf, np.inf, atol, rtol, False,
                          f"shape {list(actual.shape)} differs from the reference's {list(expected.shape)}")
    problem = nonfinite = None
    bad_actual = ~np.isfinite(actual)
    bad_expected = ~np.isfinite(expected)
    if bad_actual.any() or bad_expected.any():
        counts = (f"{int(np.isnan(actual).sum())} NaN and {int(np.isinf(actual).sum())} Inf in the output, "
                  f"{int(np.isnan(expected).sum())} NaN and {int(np.isinf(expected).sum())} Inf in the reference")
        same_nan = (np.isnan(actual) == np.isnan(expected)).all()
        same_inf = (np.isinf(actual) == np.isinf(expected)).all() and \
            (actual[np.isinf(expected)] == expected[np.isinf(expected)]).all()  # same position and sign
        if same_nan and same_inf:
            nonfinite = f"{counts}: matched in position and sign"
        else:
            problem = counts
    finite = np.isfinite(actual) & np.isfinite(expected)
    diff = np.abs(actual[finite] - expected[finite]) if finite.any() else np.zeros(1)
    ref = np.abs(expected)[finite] if finite.any() else np.ones(1)
    rel = diff / np.maximum(ref, 1e-12)
    rel_l2 = float(np.linalg.norm(diff) / max(float(np.linalg.norm(ref)), 1e-30))
    if max_error is not None:
        ok = problem is None and rel_l2 <= max_error
    else:
        ok = problem is None and bool(np.all(diff <= atol + rtol * ref))
    return Comparison(float(diff.max()), float(rel.max()), float(diff.mean()), float(np.median(diff)),
                      float(np.percentile(diff, 99)), float(atol), float(rtol), ok, problem, rel_l2, max_error,
                      nonfinite)


def relative_output_error(outputs: dict, reference: dict) -> float:
    """max over outputs of ||y - y_ref|| / ||y_ref||; NaN when any output or reference holds NaN
    (Python's max() would drop it and report 0: an all-NaN run would seem to agree)."""
    errors = [0.0]
    for name, ref in reference.items():
        ref = np.asarray(ref, dtype=np.float64)
        diff = np.linalg.norm(np.asarray(outputs[name], dtype=np.float64) - ref)
        errors.append(float(diff / np.maximum(np.linalg.norm(ref), 1e-30)))
    return float(np.max(errors))
