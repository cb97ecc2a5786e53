"""sslcore.evaluation.paired: McNemar's exact test against values worked out by hand, by brute force
and by SciPy's binomial test."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
import torch
from scipy.stats import binomtest

from sslcore.evaluation.paired import binomial_two_sided, mcnemar_exact


def _brute_force(low: int, n: int) -> float:
    """Sum the probability of every outcome sequence at least as lopsided as ``low`` of ``n``."""
    extreme = Fraction(0)
    for coins in itertools.product((0, 1), repeat=n):
        k = sum(coins)
        if min(k, n - k) <= low:
            extreme += Fraction(1, 2**n)
    return float(extreme)


@pytest.mark.parametrize("n", range(0, 11))
def test_two_sided_tail_matches_enumeration_of_every_outcome(n: int) -> None:
    for low in range(n // 2 + 1):
        assert binomial_two_sided(low, n) == pytest.approx(_brute_force(low, n), abs=1e-12)


@pytest.mark.parametrize(("low", "n"), [(0, 1), (3, 40), (180, 400), (1400, 3000), (2990, 6000)])
def test_two_sided_tail_matches_scipy_also_for_large_counts(low: int, n: int) -> None:
    assert binomial_two_sided(low, n) == pytest.approx(binomtest(low, n, 0.5).pvalue, rel=1e-9, abs=1e-300)


def test_counts_only_the_images_where_the_two_disagree() -> None:
    # 4 both right, 3 both wrong, 10 only A, 0 only B: p = 2 / 2**10
    a = torch.tensor([True] * 4 + [False] * 3 + [True] * 10)
    b = torch.tensor([True] * 4 + [False] * 3 + [False] * 10)
    result = mcnemar_exact(a, b)
    assert (result.only_a, result.only_b) == (10, 0)
    assert result.p_value == pytest.approx(2 / 1024)
    assert mcnemar_exact(b, a).p_value == result.p_value  # two-sided: symmetric
    assert mcnemar_exact(a, a).p_value == 1.0  # identical predictions: no evidence of a difference


def test_the_same_accuracy_on_different_images_is_no_evidence() -> None:
    a = torch.tensor([True, False] * 50)
    b = torch.tensor([False, True] * 50)  # 50 discordant each way
    assert mcnemar_exact(a, b).p_value == 1.0


def test_different_test_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="same test images"):
        mcnemar_exact(torch.ones(5, dtype=torch.bool), torch.ones(6, dtype=torch.bool))
