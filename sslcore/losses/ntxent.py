"""NT-Xent (normalized temperature-scaled cross entropy), the SimCLR loss.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations",
https://arxiv.org/abs/2002.05709, eq. (1): for a positive pair (i, j) among 2N views,
``l(i, j) = -log exp(sim(z_i, z_j)/t) / sum_{k != i} exp(sim(z_i, z_k)/t)``, averaged over all 2N
anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def ntxent(
    z0: Tensor,
    z1: Tensor,
    *,
    temperature: float,
    z0_all: Tensor | None = None,
    z1_all: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """NT-Xent over the local anchors, with negatives from the (optionally gathered) global batch.

    Args:
        z0: Projections of the first views, shape (B, D).
        z1: Projections of the second views, shape (B, D); row i is the positive of ``z0[i]``.
        temperature: Softmax temperature ``t`` (> 0).
        z0_all: All ranks' ``z0`` concatenated, shape (W*B, D); ``None`` means the local batch only.
        z1_all: All ranks' ``z1`` concatenated, shape (W*B, D).
        offset: Row of ``z0[0]`` inside ``z0_all`` (``rank * B``).

    Returns:
        The mean loss over the 2B local anchors, a scalar.
    """
    if not temperature > 1e-8:  # also rejects NaN
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if z0.shape != z1.shape or z0.dim() != 2:
        raise ValueError(f"z0 and z1 must both be (B, D), got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if (z0_all is None) != (z1_all is None):
        raise ValueError("pass both z0_all and z1_all, or neither")
    z0 = F.normalize(z0, dim=1)
    z1 = F.normalize(z1, dim=1)
    if z0_all is None or z1_all is None:
        z0_all, z1_all, offset = z0, z1, 0
    else:
        z0_all = F.normalize(z0_all, dim=1)
        z1_all = F.normalize(z1_all, dim=1)

    b, n = z0.shape[0], z0_all.shape[0]
    rows = torch.arange(b, device=z0.device)
    positives = rows + offset  # column of each anchor's positive (and of itself) in the global batch
    self_mask = torch.zeros(b, n, dtype=torch.bool, device=z0.device)
    self_mask[rows, positives] = True

    # b = local batch, n = global batch: logits of each anchor against every view except itself.
    logits_01 = z0 @ z1_all.T / temperature  # (b, n)
    logits_00 = (z0 @ z0_all.T / temperature).masked_fill(self_mask, float("-inf"))
    logits_10 = z1 @ z0_all.T / temperature
    logits_11 = (z1 @ z1_all.T / temperature).masked_fill(self_mask, float("-inf"))
    logits = torch.cat(
        [torch.cat([logits_01, logits_00], dim=1), torch.cat([logits_10, logits_11], dim=1)], dim=0
    )  # (2b, 2n)
    targets = torch.cat([positives, positives])
    return F.cross_entropy(logits, targets)
