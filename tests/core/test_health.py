"""sslcore.health: collapse signals checked against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from sslcore.health import effective_rank, embedding_std


@pytest.mark.parametrize("dim", [4, 16, 128])
def test_embedding_std_of_one_hot_rows_is_one_over_sqrt_d(dim: int) -> None:
    # Each column of the identity holds a single 1: its (unbiased) std over D rows is 1/sqrt(D).
    assert embedding_std(torch.eye(dim)).item() == pytest.approx(1 / math.sqrt(dim), rel=1e-6)


def test_embedding_std_of_a_collapsed_batch_is_zero() -> None:
    collapsed = torch.randn(1, 16) * torch.rand(8, 1).add(0.5)  # one direction, any positive scale
    assert embedding_std(collapsed).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_effective_rank_of_equal_singular_values_is_the_rank(rank: int) -> None:
    # Rows +e_i and -e_i (i < rank): centred already, singular values all sqrt(2).
    basis = torch.eye(rank, 32)
    z = torch.cat([basis, -basis])
    assert effective_rank(z).item() == pytest.approx(rank, rel=1e-5)


def test_effective_rank_of_a_constant_batch_is_zero() -> None:
    assert effective_rank(torch.ones(10, 5) * 3).item() == 0.0
