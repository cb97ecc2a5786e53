"""KoLeo regulariser (Sablayrolles et al. 2018, https://arxiv.org/abs/1806.03198, as used in
DINOv2, https://arxiv.org/abs/2304.07193, sec. 4): spread features by pushing each one away from
its nearest neighbour in the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sslcore.losses.precision import at_least_fp32


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """``-(1/B) sum_i log(min_{j != i} ||x_i - x_j|| + eps)`` on L2-normalised rows.

    Args:
        features: (B, D) with B >= 2.
        eps: Keeps the log finite for duplicate rows.

    Returns:
        Scalar loss.
    """
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"KoLeo needs (B, D) features with B >= 2, got {tuple(features.shape)}")
    x = F.normalize(at_least_fp32(features), dim=1, eps=eps)
    with torch.no_grad():
        sim = x @ x.T
        sim.fill_diagonal_(-2.0)  # never pick oneself
        nearest = sim.argmax(dim=1)
    distance = F.pairwise_distance(x, x[nearest], eps=eps)
    return -torch.log(distance + eps).mean()
