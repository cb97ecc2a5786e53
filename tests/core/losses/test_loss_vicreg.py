"""sslcore.losses.vicreg against a literal reference (loops over rows and dimensions) and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslcore.losses import vicreg_loss


def vicreg_reference(
    z0: np.ndarray, z1: np.ndarray, sim: float, var: float, cov: float, eps: float
) -> tuple[float, float, float, float]:
    """VICReg written out element by element: MSE; the mean hinge ``relu(1 - sqrt(Var + eps))`` per
    branch, averaged over the two branches; ``sum_{i != j} Cov_ij^2 / D`` per branch, summed."""
    n, d = z0.shape
    invariance = sum((z0[b, k] - z1[b, k]) ** 2 for b in range(n) for k in range(d)) / (n * d)

    def variance(z: np.ndarray) -> float:
        total = 0.0
        for k in range(d):
            mean = sum(z[b, k] for b in range(n)) / n
            var_k = sum((z[b, k] - mean) ** 2 for b in range(n)) / (n - 1)
            total += max(0.0, 1.0 - math.sqrt(var_k + eps))
        return total / d

    def covariance(z: np.ndarray) -> float:
        means = [sum(z[b, k] for b in range(n)) / n for k in range(d)]
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    c = sum((z[b, i] - means[i]) * (z[b, j] - means[j]) for b in range(n)) / (n - 1)
                    total += c**2
        return total / d

    v = (variance(z0) + variance(z1)) / 2
    c = covariance(z0) + covariance(z1)
    return sim * invariance + var * v + cov * c, invariance, v, c


def _pair(batch: int, dim: int, seed: int = 0, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(batch, dim, generator=g, dtype=torch.float64) * scale
    return z0, z0 + 0.5 * torch.randn(batch, dim, generator=g, dtype=torch.float64)


@pytest.mark.parametrize(("sim", "var", "cov"), [(25.0, 25.0, 1.0), (1.0, 0.0, 3.0), (0.0, 2.0, 0.5)])
@pytest.mark.parametrize("scale", [0.3, 2.0])  # both sides of the hinge at std 1
@pytest.mark.parametrize(("batch", "dim"), [(2, 1), (5, 3), (16, 8)])
def test_matches_reference(batch: int, dim: int, scale: float, sim: float, var: float, cov: float) -> None:
    z0, z1 = _pair(batch, dim, scale=scale)
    expected = vicreg_reference(z0.numpy(), z1.numpy(), sim, var, cov, 1e-4)
    got = vicreg_loss(z0, z1, sim_weight=sim, var_weight=var, cov_weight=cov)
    assert [t.item() for t in got] == pytest.approx(expected, rel=1e-10, abs=1e-12)
    got32 = vicreg_loss(z0.float(), z1.float(), sim_weight=sim, var_weight=var, cov_weight=cov)
    assert got32.loss.item() == pytest.approx(expected[0], rel=1e-5, abs=1e-6)


def test_defaults_are_the_reference_coefficients() -> None:
    z0, z1 = _pair(6, 4)
    expected = vicreg_reference(z0.numpy(), z1.numpy(), 25.0, 25.0, 1.0, 1e-4)
    assert vicreg_loss(z0, z1).loss.item() == pytest.approx(expected[0], rel=1e-10)


def test_identical_embeddings_have_zero_invariance() -> None:
    z0, _ = _pair(8, 5)
    out = vicreg_loss(z0, z0.clone())
    assert out.invariance.item() == 0.0
    torch.testing.assert_close(out.loss, 25.0 * out.variance + out.covariance)


@pytest.mark.parametrize("eps", [1e-4, 1e-2])
def test_constant_embeddings_hit_the_hinge(eps: float) -> None:
    """Collapse: every std is sqrt(eps), so the variance term is 1 - sqrt(eps) (~1, the hinge at
    gamma = 1) and the total is var_weight times that; no covariance, no invariance."""
    z = torch.full((6, 4), 3.0, dtype=torch.float64)
    out = vicreg_loss(z, z.clone(), var_weight=25.0, eps=eps)
    assert out.variance.item() == pytest.approx(1.0 - math.sqrt(eps), rel=1e-12)
    assert out.covariance.item() == 0.0 and out.invariance.item() == 0.0
    assert out.loss.item() == pytest.approx(25.0 * (1.0 - math.sqrt(eps)), rel=1e-12)


def test_decorrelated_spread_embeddings_have_zero_variance_and_covariance() -> None:
    # Columns 1..4 of an 8x8 Hadamard matrix: mean 0, pairwise orthogonal, std sqrt(8/7) > 1.
    h = torch.tensor([[1.0]], dtype=torch.float64)
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = h[:, 1:5]
    out = vicreg_loss(z, z.clone())
    assert [t.item() for t in out] == pytest.approx([0.0, 0.0, 0.0, 0.0], abs=1e-12)


def test_invariant_to_permuting_the_batch_and_swapping_views() -> None:
    z0, z1 = _pair(9, 6)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    loss = vicreg_loss(z0, z1).loss.item()
    assert vicreg_loss(z0[perm], z1[perm]).loss.item() == pytest.approx(loss, rel=1e-12)
    assert vicreg_loss(z1, z0).loss.item() == pytest.approx(loss, rel=1e-12)
    # breaking the row pairing changes only the invariance term
    rolled = vicreg_loss(z0, z1.roll(1, dims=0))
    assert rolled.invariance.item() != pytest.approx(vicreg_loss(z0, z1).invariance.item(), rel=1e-6)


def test_gradients_are_finite_and_match_finite_differences() -> None:
    z0, z1 = (t.requires_grad_() for t in _pair(5, 3, scale=0.5))
    assert torch.autograd.gradcheck(lambda a, b: vicreg_loss(a, b).loss, (z0, z1))
    # collapsed embeddings: eps keeps the gradient of sqrt(Var) finite at Var = 0
    z = torch.ones(4, 3, requires_grad=True)
    vicreg_loss(z, z * 1.0).loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_the_variance_term_pushes_a_collapsing_dimension_apart() -> None:
    z = torch.tensor([[0.0, -2.0], [0.1, 0.0], [0.2, 2.0]], requires_grad=True)  # dim 0: std 0.1
    vicreg_loss(z, z.detach(), sim_weight=0.0, cov_weight=0.0).loss.backward()
    assert z.grad is not None
    assert z.grad[0, 0] > 0 > z.grad[2, 0]  # descent moves the extremes of dim 0 outwards
    assert z.grad[:, 1].abs().max() == 0.0  # dim 1 already has std > 1


def test_bf16_inputs_are_computed_in_float32() -> None:
    z0, z1 = _pair(8, 4)
    out = vicreg_loss(z0.bfloat16(), z1.bfloat16())
    assert out.loss.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert vicreg_loss(z0.float(), z1.float()).loss.dtype == torch.float32


@pytest.mark.parametrize(("shape0", "shape1"), [((4, 8), (4, 9)), ((3, 8), (4, 8)), ((8,), (8,))])
def test_rejects_shape_mismatch(shape0: tuple[int, ...], shape1: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="must both be"):
        vicreg_loss(torch.randn(shape0), torch.randn(shape1))


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        vicreg_loss(torch.randn(1, 4), torch.randn(1, 4))
    z0, z1 = _pair(4, 3)
    for kwargs in ({"sim_weight": -1.0}, {"var_weight": float("nan")}, {"cov_weight": -0.1}):
        with pytest.raises(ValueError, match="weights must be >= 0"):
            vicreg_loss(z0, z1, **kwargs)
    for eps in (0.0, -1e-4, float("nan")):
        with pytest.raises(ValueError, match="eps must be > 0"):
            vicreg_loss(z0, z1, eps=eps)
