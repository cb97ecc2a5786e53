"""sslcore.losses.barlow_twins against a literal reference (loops over rows and dimensions) and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslcore.losses import barlow_twins_loss


def barlow_reference(z0: np.ndarray, z1: np.ndarray, lam: float, eps: float) -> tuple[float, float, float]:
    """Barlow Twins eq. (1)-(2) element by element: standardise every column (biased variance, as
    BatchNorm), ``C_ij = sum_b a_bi b_bj / N``, then the diagonal and off-diagonal sums."""
    n, d = z0.shape

    def standardise(z: np.ndarray) -> list[list[float]]:
        out = [[0.0] * d for _ in range(n)]
        for k in range(d):
            mean = sum(z[b, k] for b in range(n)) / n
            var = sum((z[b, k] - mean) ** 2 for b in range(n)) / n
            for b in range(n):
                out[b][k] = (z[b, k] - mean) / math.sqrt(var + eps)
        return out

    a, b_ = standardise(z0), standardise(z1)
    on_diag = off_diag = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[b][i] * b_[b][j] for b in range(n)) / n
            if i == j:
                on_diag += (1.0 - c) ** 2
            else:
                off_diag += c**2
    return on_diag + lam * off_diag, on_diag, off_diag


def _pair(batch: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(batch, dim, generator=g, dtype=torch.float64) * 3.0 + 1.0
    return z0, z0 + torch.randn(batch, dim, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("lam", [5e-3, 0.0051, 1.0])
@pytest.mark.parametrize(("batch", "dim"), [(2, 1), (5, 3), (16, 8)])
def test_matches_reference(batch: int, dim: int, lam: float) -> None:
    z0, z1 = _pair(batch, dim)
    expected = barlow_reference(z0.numpy(), z1.numpy(), lam, 1e-5)
    got = barlow_twins_loss(z0, z1, lambda_offdiag=lam)
    assert [t.item() for t in got] == pytest.approx(expected, rel=1e-10, abs=1e-12)
    got32 = barlow_twins_loss(z0.float(), z1.float(), lambda_offdiag=lam)
    assert got32.loss.item() == pytest.approx(expected[0], rel=1e-4, abs=1e-5)


def test_decorrelated_standardised_embeddings_have_zero_loss() -> None:
    # Columns 1..4 of a 16x16 Hadamard matrix: mean 0, std 1 (biased), pairwise orthogonal, so C = I.
    h = torch.tensor([[1.0]], dtype=torch.float64)
    for _ in range(4):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = h[:, 1:5]
    out = barlow_twins_loss(z, z.clone(), eps=1e-12)
    assert [t.item() for t in out] == pytest.approx([0.0, 0.0, 0.0], abs=1e-10)
    # the standardisation makes it invariant to a per-dimension affine map of either view
    scaled = z * torch.tensor([2.0, 0.5, 7.0, 1.0], dtype=torch.float64) + 3.0
    assert barlow_twins_loss(scaled, z, eps=1e-12).loss.item() == pytest.approx(0.0, abs=1e-10)


def test_identical_views_have_zero_on_diagonal_loss() -> None:
    z0, _ = _pair(32, 6)
    out = barlow_twins_loss(z0, z0.clone(), eps=1e-12)
    assert out.on_diag.item() == pytest.approx(0.0, abs=1e-12)
    assert out.off_diag.item() > 0  # random columns are correlated in a finite batch


def test_anti_correlated_views_closed_form() -> None:
    # z1 = -z0: C = -corr(z0); the diagonal is -1, so the on-diagonal sum is (1 - (-1))^2 * D.
    z0, _ = _pair(20, 5)
    out = barlow_twins_loss(z0, -z0, eps=1e-12)
    assert out.on_diag.item() == pytest.approx(4.0 * 5, rel=1e-9)


def test_invariant_to_permuting_the_batch() -> None:
    z0, z1 = _pair(9, 6)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    loss = barlow_twins_loss(z0, z1).loss.item()
    assert barlow_twins_loss(z0[perm], z1[perm]).loss.item() == pytest.approx(loss, rel=1e-12)
    assert barlow_twins_loss(z1, z0).loss.item() == pytest.approx(loss, rel=1e-12)  # C -> C^T
    assert barlow_twins_loss(z0, z1.roll(1, dims=0)).loss.item() != pytest.approx(loss, rel=1e-6)


def test_gradients_are_finite_and_match_finite_differences() -> None:
    z0, z1 = (t.requires_grad_() for t in _pair(6, 3))
    assert torch.autograd.gradcheck(lambda a, b: barlow_twins_loss(a, b, lambda_offdiag=0.1).loss, (z0, z1))
    z = torch.ones(4, 3, requires_grad=True)  # a collapsed batch: eps keeps the division finite
    barlow_twins_loss(z, z * 1.0).loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_bf16_inputs_are_computed_in_float32() -> None:
    z0, z1 = _pair(8, 4)
    assert barlow_twins_loss(z0.bfloat16(), z1.bfloat16()).loss.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert barlow_twins_loss(z0.float(), z1.float()).loss.dtype == torch.float32


@pytest.mark.parametrize(("shape0", "shape1"), [((4, 8), (4, 9)), ((3, 8), (4, 8)), ((8,), (8,))])
def test_rejects_shape_mismatch(shape0: tuple[int, ...], shape1: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="must both be"):
        barlow_twins_loss(torch.randn(shape0), torch.randn(shape1))


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        barlow_twins_loss(torch.randn(1, 4), torch.randn(1, 4))
    z0, z1 = _pair(4, 3)
    for lam in (-1e-3, float("nan")):
        with pytest.raises(ValueError, match="lambda_offdiag must be >= 0"):
            barlow_twins_loss(z0, z1, lambda_offdiag=lam)
    for eps in (0.0, -1e-5, float("nan")):
        with pytest.raises(ValueError, match="eps must be > 0"):
            barlow_twins_loss(z0, z1, eps=eps)
