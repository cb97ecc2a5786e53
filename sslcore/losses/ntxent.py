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


def multi_positive_ntxent(
    views: list[Tensor], *, temperature: float, views_all: list[Tensor] | None = None, offset: int = 0
) -> Tensor:
    """NT-Xent for V >= 2 views of each image (multi-crop SimCLR, as in SwAV's multi-crop ablation and
    solo-learn's SimCLR): every view is an anchor, every other view of the same image is a positive,
    and the views of the other images are its negatives.

    ``l(i) = -log sum_{p in P(i)} exp(s_ip / t) / sum_{k != i} exp(s_ik / t)``, averaged over the V*B
    local anchors; with two views it is :func:`ntxent` exactly (one positive per anchor).

    Args:
        views: V tensors (B, D), the projections of view v of each local image, in the same image order.
        temperature: Softmax temperature ``t`` (> 0).
        views_all: The same V views gathered from every rank, each (W*B, D); ``None``: the local batch only.
        offset: Row of the local images inside each gathered view (``rank * B``).
    """
    if not temperature > 1e-8:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(views) < 2 or any(v.shape != views[0].shape or v.dim() != 2 for v in views):
        raise ValueError(f"need at least two (B, D) views of the same shape, got {[tuple(v.shape) for v in views]}")
    if views_all is None:
        views_all, offset = views, 0
    if len(views_all) != len(views):
        raise ValueError(f"views_all has {len(views_all)} views, views {len(views)}")
    b, n = views[0].shape[0], views_all[0].shape[0]
    anchors = F.normalize(torch.cat(views), dim=1)  # (V*b, D), view-major
    keys = F.normalize(torch.cat(views_all), dim=1)  # (V*n, D)
    device = anchors.device
    anchor_image = torch.arange(b, device=device).repeat(len(views)) + offset
    anchor_row = anchor_image + torch.arange(len(views), device=device).repeat_interleave(b) * n
    key_image = torch.arange(n, device=device).repeat(len(views))
    is_self = anchor_row[:, None] == torch.arange(keys.shape[0], device=device)[None, :]
    logits = (anchors @ keys.T / temperature).masked_fill(is_self, float("-inf"))
    positive = (anchor_image[:, None] == key_image[None, :]) & ~is_self
    return (logits.logsumexp(dim=1) - logits.masked_fill(~positive, float("-inf")).logsumexp(dim=1)).mean()
