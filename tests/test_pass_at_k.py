"""The unbiased pass@k estimator equals its definition: the share of k-subsets of the n
samples that hold at least one correct sample."""

import itertools
import math

import numpy as np
import pytest

from rlpt_jax.rewards.pass_at_k import pass_at_k, pass_at_ks, powers_of_two


def brute_force(n: int, c: int, k: int) -> float:
    """Enumerate every k-subset of n samples, the first c of them correct."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_equals_enumeration_over_all_k_subsets(n):
    for c in range(n + 1):  # c = 0 and c = n included
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12)


def test_edge_cases_are_exact():
    assert pass_at_k(8, 0, 1) == 0.0 and pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(8, 8, 1) == 1.0 and pass_at_k(8, 8, 8) == 1.0
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)  # pass@1 is the accuracy
    assert pass_at_k(8, 1, 8) == 1.0  # every sample drawn, the correct one among them


def test_stable_where_the_binomials_overflow_floats():
    """n = 2000 samples: C(2000, 1000) is far beyond float range; the product is not."""
    n, c, k = 2000, 7, 1000
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # Python's exact integers
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(4, 5, 1)


def test_per_problem_table_and_reported_ks():
    correct = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
    table = pass_at_ks(correct, powers_of_two(4))
    assert sorted(table) == [1, 2, 4]
    np.testing.assert_allclose(table[1], [0.25, 1.0, 0.0])
    np.testing.assert_allclose(table[2], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(table[4], [1.0, 1.0, 0.0])
    assert powers_of_two(1) == [1] and powers_of_two(64)[-1] == 64
    assert powers_of_two(6) == [1, 2, 4, 6]
