"""Passes declare their order (before/after) when they register; the manager derives each level's pipeline and
refuses, when the passes load, a cycle or a pass that could never run."""

import pytest

from cnncomp.passes import manager
from cnncomp.passes.manager import PassInfo, PassOrderError, level_pipeline, pass_order


def _info(name, level=1, before=(), after=()):
    return PassInfo(name, lambda ctx: 0, True, level, {}, "", tuple(before), tuple(after))


def test_the_levels_run_the_order_they_ran_before_the_constraints():
    assert [str(s) for s in level_pipeline(1)] == ["drop-identity", "fold-bn", "fold-scale-shift", "dce"]
    assert [str(s) for s in level_pipeline(2)] == ["drop-identity", "fold-pad", "fold-bn", "fold-scale-shift",
                                                   "merge-pointwise", "dce"]


def test_the_order_follows_the_constraints_not_the_registration_order():
    passes = {p.name: p for p in [_info("z-last", after=("a-first",)), _info("a-first", before=("m-mid",)),
                                  _info("m-mid", before=("z-last",))]}
    assert pass_order(passes) == ["a-first", "m-mid", "z-last"]
    passes["z-last"], passes["a-first"] = _info("z-last"), _info("a-first", after=("z-last",))
    assert pass_order(passes) == ["m-mid", "z-last", "a-first"]


def test_a_cycle_is_refused_with_its_passes():
    passes = {p.name: p for p in [_info("a", before=("b",)), _info("b", before=("c",)), _info("c", before=("a",))]}
    with pytest.raises(PassOrderError, match="form a cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)"):
        pass_order(passes)


@pytest.mark.parametrize("bad, message", [
    (_info("typo", after=("fold_bn",)), "'typo' is ordered against 'fold_bn', which is not a registered pass"),
    (_info("late", level=3), "'late' is registered at level 3, which no -O level runs"),
])
def test_a_pass_that_could_never_run_is_refused(bad, message):
    passes = {"fold-bn": _info("fold-bn"), bad.name: bad}
    with pytest.raises(PassOrderError, match=message):
        pass_order(passes)


def test_loading_the_passes_checks_the_order(monkeypatch):
    """The check runs when the registry loads (all_passes, called by `import cnncomp.passes`)."""
    monkeypatch.setitem(manager.PASSES, "loop", _info("loop", before=("dce",), after=("dce",)))
    monkeypatch.setattr(manager, "_ORDER", [])
    with pytest.raises(PassOrderError, match="loop -> dce -> loop|dce -> loop -> dce"):
        manager.all_passes()
    monkeypatch.delitem(manager.PASSES, "loop")
    assert [str(s) for s in level_pipeline(1)] == ["drop-identity", "fold-bn", "fold-scale-shift", "dce"]

