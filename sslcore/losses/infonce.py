"""InfoNCE for momentum contrast: against a queue of negatives (MoCo v2) or the batch (MoCo v3).

Oord et al. 2018 (https://arxiv.org/abs/1807.03748) define InfoNCE; MoCo (He et al. 2019,
https://arxiv.org/abs/1911.05722, eq. 1) uses it with a momentum key encoder and a queue, and MoCo
v3 (Chen et al. 2021, https://arxiv.org/abs/2104.02057, eq. 1 and alg. 1) with the other keys of
the (global) batch as negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_temperature(temperature: float) -> None:
    if not temperature > 1e-8:  # also rejects NaN
        raise ValueError(f"temperature must be > 0, got {temperature}")


def infonce(query: Tensor, keys: Tensor, negatives: Tensor, *, temperature: float) -> Tensor:
    """MoCo's loss: each query's positive is its own key, its negatives the queue.

    ``-log exp(q.k+ / t) / (exp(q.k+ / t) + sum_n exp(q.n / t))`` for L2-normalised q, k and n,
    averaged over the batch.

    Args:
        query: (B, D) query projections.
        keys: (B, D) key projections; row i is the positive of ``query[i]``. Not differentiated.
        negatives: (K, D) queued keys. Not differentiated.
        temperature: ``t`` > 0.

    Returns:
        Scalar mean loss.
    """
    _check_temperature(temperature)
    q = F.normalize(query, dim=1)
    k = F.normalize(keys.detach(), dim=1)
    n = F.normalize(negatives.detach(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
    negative = q @ n.T  # (B, K)
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def infonce_in_batch(query: Tensor, keys: Tensor, *, temperature: float, offset: int = 0) -> Tensor:
    """MoCo v3's ``ctr(q, k)`` without its ``2t`` factor: query i's positive is key ``offset + i``
    and every other key of the global batch is a negative.

    Args:
        query: (B, D) local queries.
        keys: (W*B, D) keys of all ranks (or the local B when not distributed). Not differentiated.
        temperature: ``t`` > 0.
        offset: Row of the local batch's first key in ``keys`` (``rank * B``).

    Returns:
        Scalar mean loss over the local queries.
    """
    _check_temperature(temperature)
    q = F.normalize(query, dim=1)
    k = F.normalize(keys.detach(), dim=1)
    logits = q @ k.T / temperature  # (B, W*B)
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels)
