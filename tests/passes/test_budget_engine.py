"""The budget engine (passes/budget.py) that -O3 and int8's float32 fallback share: its choices, measured
with stand-in meters."""

import math

import numpy as np
import pytest

from cnncomp.passes.budget import cheapest_within, fewest_within, split_held_out


def test_cheapest_within_measures_a_family_from_its_dearest_member():
    # two families; errors fall as cost grows within each
    costs = [1, 2, 3, 4, 1.5, 2.5, 3.5]
    families = ["b"] * 4 + ["d"] * 3
    errors = [0.5, 0.2, 0.05, 0.01, 0.9, 0.8, 0.7]
    asked = []

    def error_of(i):
        asked.append(i)
        return errors[i]

    assert cheapest_within(costs, families, error_of, 0.1) == (2, 0.05)
    assert asked[0] == 3  # the dearest first; "d" holds nothing cheaper than 3 that fits: its 3.5 is not asked
    assert 6 not in asked and len(asked) == len(set(asked))
    asked.clear()
    assert cheapest_within(costs, families, error_of, 0.001) is None
    assert sorted(asked) == [3, 6]  # a family whose dearest member misses is not searched further


def test_cheapest_within_passes_over_what_breaks_the_assumption_and_nan():
    costs, families, errors = [1, 2, 3, 4], ["f"] * 4, [0.3, 0.05, 0.5, 0.01]
    assert cheapest_within(costs, families, lambda i: errors[i], 0.1) == (1, 0.05)
    # with 1 refused (an --autotune stand-in: not faster), 2 is assumed to fit, measured, and passed over
    assert cheapest_within(costs, families, lambda i: errors[i], 0.1, lambda i: i != 1) == (3, 0.01)
    assert cheapest_within(costs, families, lambda i: math.nan, 0.1) is None


@pytest.mark.parametrize("errors, budget, expected", [
    ([1.0, 0.5, 0.2, 0.05, 0.0], 0.1, 3),
    ([1.0, 0.5, 0.05, 0.2, 0.08, 0.0], 0.1, 4),  # a binary search: k=2 fits too, but is never measured
    ([1.0, 0.5, 0.2, 0.05, 0.0], 0.6, 1),
    ([1.0, 0.5, 0.2, 0.5, 0.5, 0.0], 0.1, 5),  # not monotone: the search's answer is checked and k grows
])
def test_fewest_within(errors, budget, expected):
    asked = []

    def error_of(k):
        asked.append(k)
        return errors[k]

    k, error = fewest_within(len(errors) - 1, error_of, budget)
    assert k == expected and error == errors[k] <= budget
    assert len(asked) == len(set(asked))


def test_the_held_out_split_is_the_last_quarter_in_whole_batches():
    samples = {"x": np.arange(16, dtype=np.float32).reshape(16, 1)}
    search, held, warnings = split_held_out(samples, batch=2)
    assert len(search["x"]) == 12 and held["x"][0, 0] == 12 and not warnings
    search, held, warnings = split_held_out({"x": samples["x"][:2]}, batch=2)
    assert held is search and "one calibration sample" in warnings[0]
