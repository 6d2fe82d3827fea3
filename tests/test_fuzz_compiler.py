"""Differential fuzzing of the compiler (cnncomp/verification/fuzz.py, NNSmith-style).

Hypothesis draws random valid graphs over every registered op; each is compiled
at -O0, -O1, -O2 and with each approximate rewrite at full rank, and ONNX
Runtime, the float64 reference and the -O0 model must agree. A failure prints the
shrunk case's spec. `python tools/fuzz.py --cases N` runs more cases and saves
failing specs.
"""

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncomp.ops.registry import all_ops
from cnncomp.verification.fuzz import (
    ARGUMENT_CHOICES, NOT_GENERATED, TENSOR_RECIPES, DrawChooser, RandomChooser, check, generatable_ops, generate, needs_recipe,
    spec_text,
)

CASES = 300  # about 20 s on one idle core


@settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(st.data())
def test_random_graphs_compile_to_what_the_reference_computes(data):
    text = spec_text(generate(DrawChooser(data)))
    findings = check(text, seed=0)
    assert not findings, "\n".join([text] + [str(f) for f in findings])


def test_every_registered_op_is_generated_or_listed_with_a_reason():
    made = Counter()
    for seed in range(600):
        made.update(layer.op for layer in generate(RandomChooser(seed)).layers())
    assert set(generatable_ops()) - set(made) == set(), "ops the generator never managed to make"
    assert set(NOT_GENERATED) <= set(all_ops()) and all(NOT_GENERATED.values())
    for (op, param), (values, why) in ARGUMENT_CHOICES.items():
        assert param in {p.name for p in all_ops()[op].params} and values and why
    unreachable = {n for n, op in all_ops().items() if needs_recipe(op) and n not in TENSOR_RECIPES}
    assert unreachable <= set(NOT_GENERATED), \
        "give these ops a recipe for their tensor arguments, or list them in NOT_GENERATED with the reason"
    assert made["conv"] and made["linear"] and made["bn"] and made["add"] and made["mul"]


def test_generated_graphs_cover_ranks_3_to_5_and_merges_with_broadcasting():
    ranks, broadcast = set(), 0
    for seed in range(200):
        graph = generate(RandomChooser(seed))
        ranks.add(len(graph.layer("x").shape))
        for layer in graph.layers():
            if layer.op in ("add", "mul") and len({t.shape for t in graph.inputs_of(layer.name)}) > 1:
                broadcast += 1
    assert ranks == {3, 4, 5} and broadcast > 0


def test_a_case_is_reproducible_from_its_seed():
    assert spec_text(generate(RandomChooser(7))) == spec_text(generate(RandomChooser(7)))


def test_the_fuzzer_finds_the_linear_bn_miscompile_when_it_is_put_back(monkeypatch):
    # Issue 10: fold-bn folded linear -> bn on rank 3 along the wrong axis. Pretend linear's
    # channel axis were always 1 (the old assumption) and the fuzzer must notice.
    monkeypatch.setattr(type(all_ops()["linear"]), "channel_axis", lambda self, attrs, rank: 1)
    for seed in range(150):
        graph = generate(RandomChooser(seed))
        if any(layer.op == "linear" for layer in graph.layers()) and check(spec_text(graph), seed):
            return
    pytest.fail("150 cases did not find the reintroduced fold-bn bug")
