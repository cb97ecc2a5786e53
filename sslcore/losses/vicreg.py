"""VICReg: variance-invariance-covariance regularisation.

Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", https://arxiv.org/abs/2105.04906, eq. (1)-(6) and Algorithm 1, with the
weighting of the reference code (``facebookresearch/vicreg`` ``main_vicreg.py``):

* invariance ``s = mean_{b,d} (z0 - z1)^2`` (MSE);
* variance ``v = (v(z0) + v(z1)) / 2`` with ``v(z) = mean_d relu(gamma - sqrt(Var(z_d) + eps))``,
  ``gamma = 1`` and the unbiased variance over the batch (the paper's eq. 6 sums the two branches;
  the reference code, whose coefficients 25/25/1 are used here, averages them);
* covariance ``c = c(z0) + c(z1)`` with ``c(z) = sum_{i != j} Cov(z)_{ij}^2 / D`` and
  ``Cov(z) = (z - mean)^T (z - mean) / (N - 1)``;
* ``loss = sim_weight * s + var_weight * v + cov_weight * c``.

Under DDP the reference computes the variance and covariance over the global batch: pass the
gathered embeddings (:func:`sslcore.distributed.gather_with_grad`) as ``z0`` and ``z1``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sslcore.losses.barlow_twins import off_diagonal
from sslcore.losses.precision import at_least_fp32

GAMMA = 1.0  # target standard deviation of every embedding dimension (paper, sec. 3.1)


class VICRegLoss(NamedTuple):
    """The weighted total and its three (unweighted) terms, all scalars."""

    loss: Tensor
    invariance: Tensor
    variance: Tensor
    covariance: Tensor


def _variance_term(z: Tensor, eps: float) -> Tensor:
    std = torch.sqrt(z.var(dim=0) + eps)  # (D,), unbiased over the batch
    return F.relu(GAMMA - std).mean()


def _covariance_term(z: Tensor) -> Tensor:
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)  # (D, D)
    return off_diagonal(cov).pow(2).sum() / d


def vicreg_loss(
    z0: Tensor,
    z1: Tensor,
    *,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
) -> VICRegLoss:
    """VICReg on the expander outputs of two views; row i of ``z0`` and of ``z1`` is one image.

    Args:
        z0: Embeddings of the first views, shape (N, D) with N >= 2.
        z1: Embeddings of the second views, shape (N, D).
        sim_weight: Invariance coefficient (the paper's lambda).
        var_weight: Variance coefficient (mu).
        cov_weight: Covariance coefficient (nu).
        eps: Added to each variance before the square root (keeps the gradient finite at 0).

    Returns:
        :class:`VICRegLoss`: the total and the invariance, variance and covariance terms. The
        arithmetic runs in float32 at least, also under autocast.
    """
    if z0.shape != z1.shape or z0.dim() != 2:
        raise ValueError(f"z0 and z1 must both be (N, D), got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.shape[0] < 2:
        raise ValueError(f"VICReg needs N >= 2 rows for the batch variance, got {z0.shape[0]}")
    if not all(w >= 0 for w in (sim_weight, var_weight, cov_weight)):  # also rejects NaN
        raise ValueError(f"weights must be >= 0, got {sim_weight}, {var_weight}, {cov_weight}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    with torch.autocast(z0.device.type, enabled=False):  # (D, D) sums in float32, not bf16
        z0, z1 = at_least_fp32(z0), at_least_fp32(z1)
        invariance = F.mse_loss(z0, z1)
        variance = (_variance_term(z0, eps) + _variance_term(z1, eps)) / 2
        covariance = _covariance_term(z0) + _covariance_term(z1)
        loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance
    return VICRegLoss(loss, invariance, variance, covariance)
