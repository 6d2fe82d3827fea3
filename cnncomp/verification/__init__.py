"""Numeric verification: compare tensors (compare.py) under tolerances (tolerances.py); run a model against the reference (harness.py)."""

from cnncomp.verification.compare import Comparison, compare, relative_output_error  # noqa: F401
from cnncomp.verification.harness import VerifyReport, make_inputs, verify  # noqa: F401
