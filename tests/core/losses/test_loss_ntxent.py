"""sslcore.losses.ntxent against a naive reference, closed forms and the gathered (multi-rank) form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslcore.losses import ntxent
from sslcore.losses.ntxent import multi_positive_ntxent


def ntxent_reference(z0: np.ndarray, z1: np.ndarray, temperature: float) -> float:
    """SimCLR eq. (1), literally: for each of the 2N views i with positive j,
    ``-log(exp(s_ij / t) / sum_{k != i} exp(s_ik / t))``, averaged over the 2N anchors."""
    z = np.concatenate([z0, z1]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z0)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / temperature) / denominator)
    return total / (2 * n)


def _pair(batch: int, dim: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g, dtype=dtype), torch.randn(batch, dim, generator=g, dtype=dtype)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("dim", [4, 128])
@pytest.mark.parametrize("batch", [2, 8, 33])
def test_matches_naive_reference(batch: int, dim: int, temperature: float) -> None:
    z0, z1 = _pair(batch, dim)
    expected = ntxent_reference(z0.numpy(), z1.numpy(), temperature)
    assert ntxent(z0, z1, temperature=temperature).item() == pytest.approx(expected, rel=1e-9)
    # float32, as in training: same value to single precision
    loss32 = ntxent(z0.float(), z1.float(), temperature=temperature).item()
    assert loss32 == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [0.07, 0.5, 2.0])
@pytest.mark.parametrize("batch", [1, 2, 8, 33])
def test_all_views_aligned_gives_log_2n_minus_1(batch: int, temperature: float) -> None:
    # Every similarity is 1, so the softmax is uniform over the 2N - 1 other views.
    direction = torch.randn(1, 16, dtype=torch.float64)
    scales = torch.rand(2 * batch, 1, dtype=torch.float64) + 0.1  # the loss normalises its inputs
    z = direction * scales
    loss = ntxent(z[:batch], z[batch:], temperature=temperature)
    assert loss.item() == pytest.approx(math.log(2 * batch - 1), abs=1e-12)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("batch", [2, 8, 33])
def test_orthogonal_negatives_closed_form(batch: int, temperature: float) -> None:
    # Positives identical (s = 1), every negative orthogonal (s = 0):
    # loss = -log(e^(1/t) / (e^(1/t) + 2N - 2)) = log(1 + (2N - 2) e^(-1/t)).
    z = torch.eye(batch, 40, dtype=torch.float64)
    loss = ntxent(z, z.clone(), temperature=temperature)
    expected = math.log1p((2 * batch - 2) * math.exp(-1.0 / temperature))
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_one_pair_has_zero_loss() -> None:
    # With N = 1 each anchor's only other view is its positive.
    z0, z1 = _pair(1, 8)
    assert ntxent(z0, z1, temperature=0.1).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("batch", [2, 8, 33])
def test_invariant_to_permuting_the_batch(batch: int) -> None:
    z0, z1 = _pair(batch, 32)
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(1))
    loss = ntxent(z0, z1, temperature=0.2)
    assert ntxent(z0[perm], z1[perm], temperature=0.2).item() == pytest.approx(loss.item(), rel=1e-12)
    # swapping the roles of the two views changes nothing either
    assert ntxent(z1, z0, temperature=0.2).item() == pytest.approx(loss.item(), rel=1e-12)


def test_pairing_matters() -> None:
    # The positives are row-aligned: breaking the pairing must change the loss.
    z0, z1 = _pair(8, 32)
    loss = ntxent(z0, z1, temperature=0.2).item()
    assert ntxent(z0, z1.roll(1, dims=0), temperature=0.2).item() != pytest.approx(loss, rel=1e-6)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize(("world", "local"), [(2, 1), (2, 4), (3, 5), (4, 8)])
def test_gathered_form_matches_the_full_batch(world: int, local: int, temperature: float) -> None:
    """Each "rank" scores its local anchors against the whole batch; the mean over ranks is the
    single-process loss, and so is its gradient w.r.t. every input row."""
    z0, z1 = (t.requires_grad_() for t in _pair(world * local, 16))
    full = ntxent(z0, z1, temperature=temperature)
    (full_g0, full_g1) = torch.autograd.grad(full, [z0, z1])

    rank_losses = []
    for rank in range(world):
        rows = slice(rank * local, (rank + 1) * local)
        rank_losses.append(
            ntxent(z0[rows], z1[rows], temperature=temperature, z0_all=z0, z1_all=z1, offset=rank * local)
        )
    mean = torch.stack(rank_losses).mean()
    assert mean.item() == pytest.approx(full.item(), rel=1e-12)
    g0, g1 = torch.autograd.grad(mean, [z0, z1])
    torch.testing.assert_close(g0, full_g0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g1, full_g1, rtol=1e-10, atol=1e-12)


def test_gathered_form_uses_the_offset() -> None:
    z0, z1 = _pair(8, 16)
    right = ntxent(z0[4:], z1[4:], temperature=0.2, z0_all=z0, z1_all=z1, offset=4)
    wrong = ntxent(z0[4:], z1[4:], temperature=0.2, z0_all=z0, z1_all=z1, offset=0)
    assert right.item() != pytest.approx(wrong.item(), rel=1e-6)


def test_finite_gradients_at_low_temperature() -> None:
    z0, z1 = (t.requires_grad_() for t in _pair(16, 8, dtype=torch.float32))
    ntxent(z0, z1, temperature=0.01).backward()
    assert z0.grad is not None and z1.grad is not None
    assert torch.isfinite(z0.grad).all() and torch.isfinite(z1.grad).all()


@pytest.mark.parametrize(
    "temperature",
    [
        0.0,
        -0.5,
        1e-9,
        float("nan"),  # fixed: the check is `not temperature > 1e-8`
    ],
)
def test_rejects_bad_temperature(temperature: float) -> None:
    z0, z1 = _pair(4, 8)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ntxent(z0, z1, temperature=temperature)


@pytest.mark.parametrize(
    ("shape0", "shape1"),
    [((4, 8), (4, 9)), ((3, 8), (4, 8)), ((8,), (8,)), ((2, 4, 8), (2, 4, 8))],
)
def test_rejects_shape_mismatch(shape0: tuple[int, ...], shape1: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="must both be"):
        ntxent(torch.randn(shape0), torch.randn(shape1), temperature=0.1)


def test_rejects_only_one_gathered_tensor() -> None:
    z0, z1 = _pair(4, 8)
    with pytest.raises(ValueError, match="pass both z0_all and z1_all"):
        ntxent(z0, z1, temperature=0.1, z0_all=z0)
    with pytest.raises(ValueError, match="pass both z0_all and z1_all"):
        ntxent(z0, z1, temperature=0.1, z1_all=z1)


def multi_positive_reference(views: list[np.ndarray], temperature: float) -> float:
    """The multi-positive form literally: anchor i, positives P(i) = the other views of its image,
    ``-log(sum_{p in P(i)} exp(s_ip / t) / sum_{k != i} exp(s_ik / t))``, averaged over all V*N anchors."""
    z = np.concatenate(views).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(views[0])
    total = 0.0
    for i in range(len(z)):
        sims = {k: math.exp(float(z[i] @ z[k]) / temperature) for k in range(len(z)) if k != i}
        positive = sum(v for k, v in sims.items() if k % n == i % n)
        total += -math.log(positive / sum(sims.values()))
    return total / len(z)


@pytest.mark.parametrize("num_views", [2, 3, 6])
@pytest.mark.parametrize("batch", [2, 7])
def test_multi_positive_matches_naive_reference(num_views: int, batch: int) -> None:
    g = torch.Generator().manual_seed(num_views)
    views = [torch.randn(batch, 8, generator=g, dtype=torch.float64) for _ in range(num_views)]
    expected = multi_positive_reference([v.numpy() for v in views], 0.2)
    assert multi_positive_ntxent(views, temperature=0.2).item() == pytest.approx(expected, rel=1e-9)


def test_multi_positive_with_two_views_is_ntxent() -> None:
    z0, z1 = _pair(9, 16)
    assert multi_positive_ntxent([z0, z1], temperature=0.1).item() == pytest.approx(
        ntxent(z0, z1, temperature=0.1).item(), rel=1e-12
    )


def test_multi_positive_gathered_form_matches_the_full_batch() -> None:
    """Each rank's loss over its local anchors, with every rank's views as keys, averages to the loss
    of the whole global batch, as with :func:`ntxent`'s gathered form."""
    g = torch.Generator().manual_seed(3)
    world, local = 3, 4
    full = [torch.randn(world * local, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    per_rank = [
        multi_positive_ntxent(
            [v[r * local : (r + 1) * local] for v in full], temperature=0.3, views_all=full, offset=r * local
        )
        for r in range(world)
    ]
    assert torch.stack(per_rank).mean().item() == pytest.approx(
        multi_positive_ntxent(full, temperature=0.3).item(), rel=1e-9
    )
    # the offset picks the rows: a wrong one is a different loss
    wrong = multi_positive_ntxent([v[:local] for v in full], temperature=0.3, views_all=full, offset=local)
    assert wrong.item() != pytest.approx(per_rank[0].item())


def test_multi_positive_all_views_of_an_image_aligned_is_low() -> None:
    """Views that agree per image and are orthogonal across images: each anchor's V-1 positives carry
    all the mass but the negatives' exp(0): the closed form log(1 + (V*N - V) e^{-1/t} / (V - 1))."""
    n, v, t = 4, 3, 0.5
    base = torch.eye(n, 8, dtype=torch.float64)
    expected = math.log(1 + (v * n - v) * math.exp(-1 / t) / (v - 1))
    assert multi_positive_ntxent([base] * v, temperature=t).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "views",
    [[torch.randn(4, 8)], [torch.randn(4, 8), torch.randn(3, 8)], [torch.randn(4, 8, 1), torch.randn(4, 8, 1)]],
)
def test_multi_positive_rejects_bad_views(views: list[torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="views"):
        multi_positive_ntxent(views, temperature=0.1)
