"""Weighted k-nearest-neighbour classification on cosine similarity.

Wu et al. 2018 (https://arxiv.org/abs/1805.01978), as used by DINO and most SSL benchmarks: the k
most similar bank samples vote for their class with weight ``exp(similarity / T)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_scores(
    queries: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    *,
    num_classes: int,
    k: int,
    temperature: float,
    chunk: int = 1024,
) -> Tensor:
    """Class scores for each query.

    Args:
        queries: Query features, (Q, D).
        bank: Bank features, (N, D).
        bank_labels: Integer labels of the bank, (N,).
        num_classes: C, the number of classes.
        k: Neighbours per query; capped at N.
        temperature: Vote temperature T.

    Returns:
        Scores (Q, C): the sum of ``exp(cos / T)`` over the k nearest neighbours of each class.
    """
    if bank.shape[0] == 0:
        raise ValueError("the kNN bank is empty")
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError(f"bank has {bank.shape[0]} rows but {bank_labels.shape[0]} labels")
    q = F.normalize(queries.float(), dim=1)
    b = F.normalize(bank.float(), dim=1)
    k = min(k, b.shape[0])
    out = torch.zeros(q.shape[0], num_classes)
    for start in range(0, q.shape[0], chunk):
        sim = q[start : start + chunk] @ b.T  # (q, N)
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        out[start : start + chunk].scatter_add_(1, bank_labels[top_idx], weights)
    return out


def knn_accuracy(
    queries: Tensor,
    query_labels: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (top-5 capped at the number of classes)."""
    ranked = knn_ranked(queries, bank, bank_labels, num_classes=num_classes, k=k, temperature=temperature)
    return ranked_accuracy(ranked, query_labels)


def knn_ranked(
    queries: Tensor, bank: Tensor, bank_labels: Tensor, *, num_classes: int, k: int, temperature: float
) -> Tensor:
    """Each query's classes, best vote first, (Q, C); ties go to the lower class."""
    scores = knn_scores(queries, bank, bank_labels, num_classes=num_classes, k=k, temperature=temperature)
    return scores.argsort(dim=1, descending=True, stable=True)


def ranked_accuracy(ranked: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy of class rankings (Q, C); top-5 looks at min(5, C) classes."""
    top1 = (ranked[:, 0] == labels).float().mean().item()
    top5 = (ranked[:, :5] == labels[:, None]).any(dim=1).float().mean().item()
    return {"top1": top1, "top5": top5}
