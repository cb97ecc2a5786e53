"""Label-free health signals of an embedding batch, to catch collapse while training runs.

* ``embedding_std``: the mean per-dimension standard deviation of L2-normalised embeddings
  (SimSiam, Chen & He 2021, https://arxiv.org/abs/2011.10566, sec. 4.1): about ``1/sqrt(D)`` for
  well-spread embeddings, 0 when every sample maps to the same direction.
* ``effective_rank``: ``exp`` of the entropy of the normalised singular values of the centred batch
  (Roy & Vetterli 2007; RankMe, Garrido et al. 2023, https://arxiv.org/abs/2210.02885): between 1
  and ``min(B, D)``, and 0 for a constant batch. It catches *dimensional* collapse, where samples
  still differ but only along a few directions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Warn below these: 10% of the healthy spread, or (nearly) a single direction of variation.
MIN_STD_RATIO = 0.1
MIN_EFFECTIVE_RANK = 2.0


def embedding_std(z: Tensor) -> Tensor:
    """Mean per-dimension std of L2-normalised embeddings (B, D): ~1/sqrt(D) when healthy, 0 when
    collapsed (Chen & He 2021, SimSiam sec. 4.1)."""
    return F.normalize(z, dim=1).std(dim=0).mean()


def effective_rank(z: Tensor, eps: float = 1e-12) -> Tensor:
    """``exp(H(p))`` with ``p = s / sum(s)``, s the singular values of the centred (B, D) batch."""
    centred = z.detach().float() - z.detach().float().mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(centred)
    total = s.sum()
    if total <= eps * max(1.0, float(z.detach().abs().max())):
        return torch.zeros(())
    p = s / total
    return torch.exp(-(p * torch.log(p.clamp(min=eps))).sum())


def embedding_health(z: Tensor) -> dict[str, float]:
    """``embedding_std``, the same scaled by ``sqrt(D)`` (1 = healthy) and ``effective_rank``."""
    std = float(embedding_std(z.detach().float()))
    return {
        "health_std": std,
        "health_std_ratio": std * math.sqrt(z.shape[1]),
        "health_effective_rank": float(effective_rank(z)),
    }


def collapse_warning(health: dict[str, float]) -> str | None:
    """A one-line warning when the signals from :func:`embedding_health` point towards collapse
    (non-finite embeddings, from a diverged run, count as collapsed)."""
    problems = []
    if not all(math.isfinite(health[k]) for k in ("health_std_ratio", "health_effective_rank")):
        problems.append("embeddings are not finite (the run diverged)")
    elif health["health_std_ratio"] < MIN_STD_RATIO:
        problems.append(f"std of normalised embeddings is {health['health_std_ratio']:.3f} of the healthy 1/sqrt(D)")
    if math.isfinite(health["health_effective_rank"]) and health["health_effective_rank"] < MIN_EFFECTIVE_RANK:
        problems.append(f"effective rank is {health['health_effective_rank']:.2f}")
    if not problems:
        return None
    return (
        "possible representation collapse: " + "; ".join(problems) + " (lower train.lr, or check the "
        "method's temperatures and momentum)"
    )


@torch.no_grad()
def backbone_health(backbone: nn.Module, images: Tensor) -> dict[str, float]:
    """:func:`embedding_health` of ``backbone`` features of ``images`` (B, C, H, W), in eval mode
    (BatchNorm running statistics, no state change); the training mode is restored."""
    was_training = backbone.training
    backbone.eval()
    try:
        return embedding_health(backbone(images).float())
    finally:
        backbone.train(was_training)


class TrainingCollapsed(RuntimeError):
    """Training stopped early because its representation collapsed (``train.on_collapse=stop``);
    the checkpoint of the stopping epoch is kept. Retrying the same recipe cannot help."""
