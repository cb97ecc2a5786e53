"""Is one encoder's accuracy really above another's on the same test images?

Two encoders scored on the same test set differ by chance on the images only one of them gets
right. McNemar's exact test (McNemar 1947; Dietterich 1998, https://doi.org/10.1162/089976698300017197,
recommends it for comparing two classifiers on one test set) looks only at those discordant
images: under "equally good", each is a fair coin between the two encoders, so the count that only
encoder A gets right is Binomial(n, 1/2) for n discordant images. The two-sided p-value is the
probability of a split at least as lopsided.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class PairedTest:
    only_a: int  # test images encoder A classifies correctly and B does not
    only_b: int  # the other way round
    p_value: float  # two-sided exact McNemar


def mcnemar_exact(correct_a: Tensor, correct_b: Tensor) -> PairedTest:
    """Exact two-sided McNemar test of two classifiers' per-image correctness (bool, same order).

    Raises:
        ValueError: the two vectors score different test sets (lengths differ).
    """
    if correct_a.shape != correct_b.shape:
        shapes = f"{tuple(correct_a.shape)} vs {tuple(correct_b.shape)}"
        raise ValueError(f"a paired test needs the same test images, got correctness vectors of {shapes}")
    a, b = correct_a.bool(), correct_b.bool()
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    return PairedTest(only_a, only_b, binomial_two_sided(min(only_a, only_b), only_a + only_b))


def binomial_two_sided(low: int, n: int) -> float:
    """P(X <= low or X >= n - low) for X ~ Binomial(n, 1/2), with ``low <= n / 2``; exact (integer
    arithmetic: no underflow for the thousands of discordant images of a large test set)."""
    tail, term = 0, 1  # term = comb(n, i), updated in place: O(low) multiplications, not O(low) combs
    for i in range(low + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return min(1.0, 2 * tail / 2**n)
