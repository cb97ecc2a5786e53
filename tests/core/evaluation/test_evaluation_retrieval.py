"""sslcore.evaluation.retrieval: self-retrieval on embeddings whose answer is known."""

from __future__ import annotations

import pytest
import torch

from sslcore.evaluation.retrieval import self_retrieval


def test_identical_queries_always_find_themselves() -> None:
    z = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    assert self_retrieval(z, z.clone()) == {"top1": 1.0, "top5": 1.0}
    assert self_retrieval(z, 3.0 * z) == {"top1": 1.0, "top5": 1.0}  # cosine: the scale does not matter


def test_a_collapsed_encoder_scores_zero_not_one() -> None:
    """Every embedding equal: each query ties with all N images, and ties count against it."""
    z = torch.ones(50, 8)
    assert self_retrieval(z, z) == {"top1": 0.0, "top5": 0.0}


def test_features_that_ignore_the_image_score_chance() -> None:
    gen = torch.Generator().manual_seed(1)
    n, trials = 100, 30
    top1 = [self_retrieval(torch.randn(n, 32, generator=gen), torch.randn(n, 32, generator=gen))["top1"]
            for _ in range(trials)]  # fmt: skip
    mean = sum(top1) / trials
    assert mean == pytest.approx(1 / n, abs=3 * (1 / n / (n * trials)) ** 0.5 + 1e-3)


def test_small_noise_keeps_most_queries_home_and_large_noise_does_not() -> None:
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(300, 32, generator=gen)
    near = self_retrieval(z, z + 0.1 * torch.randn(z.shape, generator=gen))
    far = self_retrieval(z, z + 3.0 * torch.randn(z.shape, generator=gen))
    assert near["top1"] > 0.95 and far["top1"] < 0.5
    assert far["top1"] <= far["top5"]


def test_rank_is_counted_against_every_other_image_and_chunks_agree() -> None:
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    queries = torch.tensor([[0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])  # query 0 lands on image 1
    assert self_retrieval(gallery, queries, ks=(1, 2))["top1"] == pytest.approx(2 / 3)
    z = torch.randn(97, 8, generator=torch.Generator().manual_seed(3))
    q = z + 0.8 * torch.randn(z.shape, generator=torch.Generator().manual_seed(4))
    assert self_retrieval(z, q, chunk=10) == self_retrieval(z, q, chunk=1024)
    assert self_retrieval(z[:3], q[:3], ks=(5,)) == {"top5": 1.0}  # k capped at N


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="must be the same"):
        self_retrieval(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least one"):
        self_retrieval(torch.zeros(0, 3), torch.zeros(0, 3))
