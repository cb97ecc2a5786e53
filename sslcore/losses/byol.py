"""BYOL's regression loss (Grill et al. 2020, https://arxiv.org/abs/2006.07733, eq. 2)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)``, averaged over the batch.

    Args:
        prediction: (B, D) online predictions ``q(z_online)``.
        target: (B, D) target projections; no gradient flows into them (stop-gradient).

    Returns:
        Scalar in [0, 4].
    """
    if prediction.shape != target.shape or prediction.dim() != 2:
        raise ValueError(f"expected two (B, D) tensors, got {tuple(prediction.shape)} and {tuple(target.shape)}")
    return 2.0 - 2.0 * F.cosine_similarity(prediction, target.detach(), dim=1).mean()
