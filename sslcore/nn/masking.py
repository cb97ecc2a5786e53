"""Patch masks for masked image modelling.

* :func:`random_masking`: MAE's per-sample uniform masking of an exact share of the patches
  (He et al. 2021, https://arxiv.org/abs/2111.06377, sec. 3, ``random_masking`` in ``models_mae.py``).
* :func:`block_mask` / :func:`block_masks`: BEiT's block-wise masking (Bao et al. 2021,
  https://arxiv.org/abs/2106.08254, algorithm 1, ``MaskingGenerator``), also used by iBOT and DINOv2.

Masks are boolean with ``True`` = masked. Randomness comes from torch's global generator, so
``torch.manual_seed`` makes every mask repeatable.
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor


def random_masking(batch: int, num_patches: int, mask_ratio: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """Choose ``num_patches - int(num_patches * (1 - mask_ratio))`` masked patches per sample.

    Args:
        batch: B, the number of samples.
        num_patches: N, patches per sample.
        mask_ratio: Share of masked patches in [0, 1).
        device: Where the outputs live.

    Returns:
        ``ids_keep`` (B, N_keep): indices of the visible patches, in increasing order;
        ``mask`` (B, N): ``True`` where a patch is masked.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = int(num_patches * (1.0 - mask_ratio))
    noise = torch.rand(batch, num_patches, device=device)
    ids_keep = noise.argsort(dim=1)[:, :keep].sort(dim=1).values
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, ids_keep, False)
    return ids_keep, mask


def block_mask(
    height: int,
    width: int,
    num_masked: int,
    *,
    min_block: int,
    max_block: int | None = None,
    min_aspect: float = 0.3,
    rng: random.Random,
) -> Tensor:
    """BEiT's block-wise mask of at most ``num_masked`` patches on a ``height x width`` grid.

    Rectangles of area in ``[min_block, max_block]`` and aspect ratio in ``[min_aspect,
    1 / min_aspect]`` are added until ``num_masked`` patches are covered, or ten tries in a row
    add nothing (then fewer are masked, exactly as in the reference).

    Returns:
        (height, width) boolean mask.
    """
    mask = torch.zeros(height, width, dtype=torch.bool)
    max_block = num_masked if max_block is None else max_block
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    count = 0
    while count < num_masked:
        budget = min(num_masked - count, max_block)
        added = 0
        for _ in range(10):
            area = rng.uniform(min_block, budget)
            aspect = math.exp(rng.uniform(*log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if h < height and w < width:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= budget:
                    block.fill_(True)
                    added = new
            if added > 0:
                break
        if added == 0:
            break
        count += added
    return mask


def block_masks(
    batch: int,
    grid: tuple[int, int],
    ratio: tuple[float, float],
    *,
    probability: float = 1.0,
    min_block: int,
    min_aspect: float = 0.3,
) -> Tensor:
    """Block-wise masks for a batch (iBOT/DINOv2 style).

    Each sample is masked with probability ``probability``; a masked sample covers
    ``int(N * r)`` patches with ``r ~ U(ratio)`` (BEiT: a fixed ratio, ``ratio = (0.4, 0.4)``).

    Returns:
        (B, N) boolean masks, N = ``grid[0] * grid[1]``, row-major like timm's patch order.
    """
    rng = random.Random(int(torch.randint(0, 2**31 - 1, ())))
    height, width = grid
    masks = torch.zeros(batch, height * width, dtype=torch.bool)
    for i in range(batch):
        if rng.random() < probability:
            count = int(height * width * rng.uniform(*ratio))
            if count > 0:
                masks[i] = block_mask(
                    height, width, count, min_block=min_block, min_aspect=min_aspect, rng=rng
                ).flatten()
    return masks
