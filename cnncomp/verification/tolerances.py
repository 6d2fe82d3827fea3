"""Default tolerances: float32 and float16 element-wise bounds, and the relative L2 budget of approximate rewrites.

An output agrees when every element obeys |actual - ref| <= atol + rtol * |ref|. Unless given,
atol scales with the output's magnitude (atol = unit * max|ref|), so that a network with outputs
near 1e3 is judged as one with outputs near 1.
"""

from __future__ import annotations

from cnncomp.passes.budget import DEFAULT_MAX_ERROR  # noqa: F401  (one default budget: the budget engine's)

DEFAULT_TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2),  # (atol per unit of max|ref|, rtol)
                      "int8": (1e-1, 1e-1)}  # int8 is judged by the relative L2 budget; these only fill the report


def tolerance_for(name: str, given: dict[str, float] | float | None) -> float | None:
    """A tolerance from --atol/--rtol: one number for all outputs, or per output name."""
    if given is None or isinstance(given, float):
        return given
    return given.get(name, given.get("", None))
