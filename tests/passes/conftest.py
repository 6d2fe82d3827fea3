import pytest

from pass_helpers import optimize


@pytest.fixture
def run_passes():
    """optimize(spec_or_text, passes) -> Optimized: the pipeline run with the graph lint after every pass."""
    return optimize
