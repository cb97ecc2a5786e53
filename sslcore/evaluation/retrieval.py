"""Augmentation-invariance retrieval: a label-free kNN consistency score.

Each held-out image is embedded twice, once plainly (the gallery) and once as an augmented view
(the query). The score is the share of queries whose nearest gallery embedding (cosine) is their
own image's, among every image of the held-out set: 1.0 when augmentations never move an image
away from itself, ``1/N`` for features that ignore the image. It needs no labels, so it is the
headline for unlabeled data, and it falls with collapse (every image looks alike) as well as
with features that change under the augmentations the encoder should be invariant to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TIE = 1e-9  # cosines this close count as equal: rounding in the product must not break a collapsed tie


@torch.no_grad()
def self_retrieval(
    gallery: Tensor, queries: Tensor, ks: tuple[int, ...] = (1, 5), chunk: int = 1024
) -> dict[str, float]:
    """Top-k self-retrieval of ``queries`` (N, D) against ``gallery`` (N, D), row i of both the same image.

    Returns ``{"top1": ..., "top5": ...}`` (one key per k, each k capped at N). Ties go against the
    query: a query equally close to its own image and another counts as a miss, so a collapsed
    encoder (all embeddings equal) scores 0, not 1.
    """
    if gallery.shape != queries.shape or gallery.ndim != 2:
        raise ValueError(f"gallery {tuple(gallery.shape)} and queries {tuple(queries.shape)} must be the same (N, D)")
    n = len(gallery)
    if n == 0:
        raise ValueError("self-retrieval needs at least one image")
    g = F.normalize(gallery.double(), dim=1)
    q = F.normalize(queries.double(), dim=1)
    ranks = torch.empty(n, dtype=torch.long)
    for start in range(0, n, chunk):
        sims = q[start : start + chunk] @ g.T  # (c, N)
        own = sims[torch.arange(len(sims)), torch.arange(start, start + len(sims))]
        ranks[start : start + len(sims)] = (sims >= own[:, None] - TIE).sum(dim=1) - 1  # others at least as close
    return {f"top{k}": float((ranks < min(k, n)).double().mean()) for k in ks}
