"""Fixtures shared by test modules."""

import pytest

from cnncomp.passes._rewrite import weight
from cnncomp.passes.manager import PASSES, register_pass


@pytest.fixture
def breaking_pass():
    """make(layer) registers a deliberately wrong exact pass, `test-break-<layer>`, that scales that layer's
    weights by 1.5 (once per graph) and returns its name; the passes are unregistered afterwards."""
    names = []

    def make(layer: str) -> str:
        name = f"test-break-{layer}"

        @register_pass(name, exact=True)
        def scale_weights(ctx):
            if layer not in ctx.graph or ctx.graph.meta.get("broken"):
                return 0
            ctx.weights[f"{layer}.weight"] = weight(ctx, layer, "weight") * 1.5
            ctx.graph.meta["broken"] = True
            return 1

        names.append(name)
        return name

    yield make
    for name in names:
        del PASSES[name]


@pytest.fixture
def fresh_timing_cache(tmp_path, monkeypatch):
    """int8's timing cache in a folder of this test alone: layer times another test cached for the same model
    are not read here (the folder, for tests that look into it)."""
    monkeypatch.setenv("CNNCOMP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(autouse=True, scope="session")
def _timing_cache(tmp_path_factory):
    """int8's timing cache (precision/int8_speed.py) in a folder of this test session, not the user's ~/.cache."""
    import os

    old = os.environ.get("CNNCOMP_CACHE_DIR")
    os.environ["CNNCOMP_CACHE_DIR"] = str(tmp_path_factory.mktemp("cnncomp-cache"))
    yield
    if old is None:
        os.environ.pop("CNNCOMP_CACHE_DIR", None)
    else:
        os.environ["CNNCOMP_CACHE_DIR"] = old
