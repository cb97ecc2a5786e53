"""Label-free health of an encoder's embeddings, measured on a whole evaluation split.

* RankMe (Garrido et al. 2023, https://arxiv.org/abs/2210.02885): ``exp`` of the entropy of the
  normalised singular values of the (N, D) embedding matrix; from 1 (collapsed) to ``min(N, D)``.
* std of L2-normalised embeddings, scaled by ``sqrt(D)`` (SimSiam, sec. 4.1): ~1 healthy, 0 collapsed.
* alignment and uniformity (Wang & Isola 2020, https://arxiv.org/abs/2005.10242): alignment is
  ``E ||f(x) - f(x+)||^2`` over two augmented views of the same image (lower is better);
  uniformity is ``log E exp(-2 ||f(x) - f(y)||^2)`` over pairs of images (lower is better).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Flag collapse below either: a tenth of the healthy spread, or under 1% of the possible rank.
COLLAPSE_STD_RATIO = 0.1
COLLAPSE_RANK_FRACTION = 0.01


def rankme(z: Tensor, eps: float = 1e-7) -> float:
    """RankMe of embeddings (N, D)."""
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum().clamp_min(eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def std_ratio(z: Tensor) -> float:
    """Mean per-dimension std of L2-normalised embeddings (N, D), times sqrt(D)."""
    return float(F.normalize(z.double(), dim=1).std(dim=0).mean() * math.sqrt(z.shape[1]))


def alignment(z0: Tensor, z1: Tensor) -> float:
    """Mean squared distance between normalised embeddings of positive pairs (N, D) x (N, D)."""
    return float((F.normalize(z0.double(), dim=1) - F.normalize(z1.double(), dim=1)).pow(2).sum(dim=1).mean())


def uniformity(z: Tensor, t: float = 2.0) -> float:
    """``log`` of the mean Gaussian potential over all pairs of normalised embeddings (N, D)."""
    zn = F.normalize(z.double(), dim=1)
    return float(torch.pdist(zn).pow(2).mul(-t).exp().mean().log())


def health_metrics(z: Tensor, z0: Tensor | None = None, z1: Tensor | None = None) -> dict[str, float]:
    """RankMe, std ratio, uniformity, and alignment when two views are given; plus ``collapsed`` (0/1)."""
    out = {"rankme": rankme(z), "std_ratio": std_ratio(z), "uniformity": uniformity(z[:2000])}
    if z0 is not None and z1 is not None:
        out["alignment"] = alignment(z0, z1)
    collapsed = out["std_ratio"] < COLLAPSE_STD_RATIO or out["rankme"] < COLLAPSE_RANK_FRACTION * min(z.shape)
    out["collapsed"] = float(collapsed)
    return out
