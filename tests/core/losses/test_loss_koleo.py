"""sslcore.losses.koleo: -mean log distance to the nearest neighbour on the unit sphere."""

from __future__ import annotations

import math

import pytest
import torch

from sslcore.losses import koleo_loss


def _naive(x: torch.Tensor) -> float:
    x = x / x.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(x.shape[0]):
        nearest = min(float((x[i] - x[j]).norm()) for j in range(x.shape[0]) if j != i)
        total += -math.log(nearest + 1e-8)
    return total / x.shape[0]


@pytest.mark.parametrize(("batch", "dim"), [(2, 3), (5, 8), (16, 4)])
def test_matches_naive_nearest_neighbour(batch: int, dim: int) -> None:
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(batch), dtype=torch.float64)
    assert koleo_loss(x).item() == pytest.approx(_naive(x), rel=1e-5)


def test_orthonormal_rows_closed_form_and_order_invariance() -> None:
    x = torch.eye(6) * torch.arange(1, 7).float()[:, None]  # scale does not matter
    assert koleo_loss(x).item() == pytest.approx(-math.log(math.sqrt(2)), rel=1e-5)
    y = torch.randn(7, 5)
    torch.testing.assert_close(koleo_loss(y[torch.randperm(7)]), koleo_loss(y))


def test_pushes_close_points_apart() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]], requires_grad=True)
    koleo_loss(x).backward()
    assert x.grad is not None and x.grad[1, 1] < 0 < x.grad[1, 0] * 0 + 1  # point 1 moves away from 0


def test_needs_two_rows() -> None:
    with pytest.raises(ValueError, match="B >= 2"):
        koleo_loss(torch.randn(1, 4))
