"""sslcore.losses.byol: 2 - 2 cos(p, z) with stop-gradient on the target."""

from __future__ import annotations

import pytest
import torch

from sslcore.losses import byol_loss


def _naive(p: torch.Tensor, z: torch.Tensor) -> float:
    total = 0.0
    for a, b in zip(p, z, strict=True):
        diff = a / a.norm() - b / b.norm()
        total += float(diff @ diff)
    return total / p.shape[0]


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("dim", [2, 32])
def test_matches_the_normalised_squared_error(batch: int, dim: int) -> None:
    g = torch.Generator().manual_seed(dim)
    p, z = torch.randn(2, batch, dim, generator=g, dtype=torch.float64)
    assert byol_loss(p, z).item() == pytest.approx(_naive(p, z), rel=1e-10)


def test_closed_forms() -> None:
    z = torch.randn(4, 8)
    assert byol_loss(3.0 * z, z).item() == pytest.approx(0.0, abs=1e-6)  # same direction
    assert byol_loss(-z, z).item() == pytest.approx(4.0, rel=1e-6)  # opposite
    e = torch.eye(8)
    assert byol_loss(e[:4], e[4:]).item() == pytest.approx(2.0, rel=1e-6)  # orthogonal


def test_stop_gradient_on_target_and_order_invariance() -> None:
    p = torch.randn(6, 8, requires_grad=True)
    z = torch.randn(6, 8, requires_grad=True)
    loss = byol_loss(p, z)
    loss.backward()
    assert p.grad is not None and z.grad is None
    perm = torch.randperm(6)
    torch.testing.assert_close(byol_loss(p[perm], z[perm]), loss)


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"expected two \(B, D\) tensors"):
        byol_loss(torch.randn(3, 4), torch.randn(3, 5))
