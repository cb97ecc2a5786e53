"""Barlow Twins: make the cross-correlation of two views' embeddings the identity.

Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
https://arxiv.org/abs/2103.03230, eq. (1)-(2) and Algorithm 1: each embedding dimension is
standardised over the batch (``BatchNorm1d(affine=False)`` in the reference), then

``C_ij = sum_b z0n_bi z1n_bj / N``,  ``loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``.

Under DDP the reference normalises with SyncBatchNorm and sums ``C`` over the ranks, i.e. it
computes ``C`` over the global batch: pass the gathered embeddings
(:func:`sslcore.distributed.gather_with_grad`) as ``z0`` and ``z1``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sslcore.losses.precision import at_least_fp32


class BarlowTwinsLoss(NamedTuple):
    """The total ``on_diag + lambda * off_diag`` and its two (unweighted) sums, all scalars."""

    loss: Tensor
    on_diag: Tensor
    off_diag: Tensor


def off_diagonal(m: Tensor) -> Tensor:
    """The D*(D-1) off-diagonal entries of a square (D, D) matrix, flattened."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def _standardise(z: Tensor, eps: float) -> Tensor:
    """Each column to mean 0 and std 1 over the batch: BatchNorm's training-mode normalisation
    (biased variance, ``eps`` inside the square root)."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


def barlow_twins_loss(z0: Tensor, z1: Tensor, *, lambda_offdiag: float = 5e-3, eps: float = 1e-5) -> BarlowTwinsLoss:
    """Barlow Twins on the projector outputs of two views; row i of ``z0`` and of ``z1`` is one image.

    Args:
        z0: Embeddings of the first views, shape (N, D) with N >= 2.
        z1: Embeddings of the second views, shape (N, D).
        lambda_offdiag: Weight of the redundancy-reduction (off-diagonal) term (reference: 0.0051).
        eps: Added to each variance before the square root, as BatchNorm's ``eps``.

    Returns:
        :class:`BarlowTwinsLoss`. The arithmetic runs in float32 at least, also under autocast.
    """
    if z0.shape != z1.shape or z0.dim() != 2:
        raise ValueError(f"z0 and z1 must both be (N, D), got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.shape[0] < 2:
        raise ValueError(f"Barlow Twins needs N >= 2 rows to standardise over the batch, got {z0.shape[0]}")
    if not lambda_offdiag >= 0:  # also rejects NaN
        raise ValueError(f"lambda_offdiag must be >= 0, got {lambda_offdiag}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    with torch.autocast(z0.device.type, enabled=False):  # (D, D) sums in float32, not bf16
        z0n, z1n = _standardise(at_least_fp32(z0), eps), _standardise(at_least_fp32(z1), eps)
        c = z0n.T @ z1n / z0.shape[0]  # (D, D) cross-correlation
        on_diag = (1 - torch.diagonal(c)).pow(2).sum()
        off_diag = off_diagonal(c).pow(2).sum()
        loss = on_diag + lambda_offdiag * off_diag
    return BarlowTwinsLoss(loss, on_diag, off_diag)
