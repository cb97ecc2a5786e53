"""sslcore.evaluation.knn against a brute-force weighted vote written out in full."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslcore.evaluation.knn import knn_accuracy, knn_scores


def knn_scores_reference(
    queries: np.ndarray, bank: np.ndarray, labels: np.ndarray, num_classes: int, k: int, temperature: float
) -> np.ndarray:
    """Full cosine-similarity matrix, sort each row, let the k nearest vote with exp(sim / T)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    scores = np.zeros((len(q), num_classes))
    for i in range(len(q)):
        sims = [float(q[i] @ b[j]) for j in range(len(b))]
        nearest = sorted(range(len(b)), key=lambda j: -sims[j])[:k]
        for j in nearest:
            scores[i, labels[j]] += math.exp(sims[j] / temperature)
    return scores


def accuracy_reference(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Rank classes by score, ties to the lower class; top-5 looks at min(5, C) classes."""
    top1 = top5 = 0
    for row, label in zip(scores, labels, strict=True):
        ranked = sorted(range(len(row)), key=lambda c: (-row[c], c))
        top1 += ranked[0] == label
        top5 += label in ranked[:5]
    return {"top1": top1 / len(labels), "top5": top5 / len(labels)}


def _data(
    n_queries: int, n_bank: int, dim: int, num_classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n_queries, dim)).astype(np.float32),
        rng.integers(0, num_classes, size=n_queries),
        rng.normal(size=(n_bank, dim)).astype(np.float32),
        rng.integers(0, num_classes, size=n_bank),
    )


@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("k", [1, 5, 40, 100])
@pytest.mark.parametrize("num_classes", [2, 7])
def test_scores_match_brute_force(num_classes: int, k: int, temperature: float) -> None:
    q, _, bank, labels = _data(9, 40, 8, num_classes)
    expected = knn_scores_reference(q, bank, labels, num_classes, k, temperature)
    got = knn_scores(
        torch.from_numpy(q),
        torch.from_numpy(bank),
        torch.from_numpy(labels),
        num_classes=num_classes,
        k=k,
        temperature=temperature,
    )
    assert got.shape == (9, num_classes)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)


@pytest.mark.parametrize("k", [1, 3, 20])
@pytest.mark.parametrize("num_classes", [3, 10])
def test_accuracy_matches_brute_force(num_classes: int, k: int) -> None:
    q, q_labels, bank, labels = _data(50, 60, 6, num_classes, seed=1)
    scores = knn_scores_reference(q, bank, labels, num_classes, k, 0.1)
    expected = accuracy_reference(scores, q_labels)
    got = knn_accuracy(
        torch.from_numpy(q),
        torch.from_numpy(q_labels),
        torch.from_numpy(bank),
        torch.from_numpy(labels),
        num_classes=num_classes,
        k=k,
        temperature=0.1,
    )
    assert got == pytest.approx(expected)


def test_k_larger_than_the_bank_uses_the_whole_bank() -> None:
    q, _, bank, labels = _data(4, 6, 5, 3)
    args = (torch.from_numpy(q), torch.from_numpy(bank), torch.from_numpy(labels))
    whole = knn_scores(*args, num_classes=3, k=6, temperature=0.2)
    torch.testing.assert_close(knn_scores(*args, num_classes=3, k=1000, temperature=0.2), whole)
    expected = knn_scores_reference(q, bank, labels, 3, 6, 0.2)
    np.testing.assert_allclose(whole.numpy(), expected, rtol=1e-5)


def test_chunking_does_not_change_scores() -> None:
    q, _, bank, labels = _data(11, 30, 5, 4)
    args = (torch.from_numpy(q), torch.from_numpy(bank), torch.from_numpy(labels))
    torch.testing.assert_close(
        knn_scores(*args, num_classes=4, k=5, temperature=0.1, chunk=3),
        knn_scores(*args, num_classes=4, k=5, temperature=0.1),
    )


def test_features_are_compared_by_cosine() -> None:
    q, _, bank, labels = _data(5, 20, 4, 3)
    args = dict(num_classes=3, k=4, temperature=0.1)
    base = knn_scores(torch.from_numpy(q), torch.from_numpy(bank), torch.from_numpy(labels), **args)
    scaled = knn_scores(torch.from_numpy(q * 7), torch.from_numpy(bank * 0.01), torch.from_numpy(labels), **args)
    torch.testing.assert_close(scaled, base)


def test_single_class() -> None:
    q, _, bank, _ = _data(6, 10, 4, 1)
    labels = np.zeros(10, dtype=np.int64)
    scores = knn_scores(
        torch.from_numpy(q), torch.from_numpy(bank), torch.from_numpy(labels), num_classes=1, k=3, temperature=0.5
    )
    np.testing.assert_allclose(scores.numpy(), knn_scores_reference(q, bank, labels, 1, 3, 0.5), rtol=1e-5)
    acc = knn_accuracy(
        torch.from_numpy(q),
        torch.zeros(6, dtype=torch.int64),
        torch.from_numpy(bank),
        torch.from_numpy(labels),
        num_classes=1,
        k=3,
    )
    assert acc == {"top1": 1.0, "top5": 1.0}


@pytest.mark.parametrize("bank_order", [[0, 1], [1, 0]])
def test_tied_scores_go_to_the_lower_class(bank_order: list[int]) -> None:
    # The query is orthogonal to both bank rows: both get weight exp(0) = 1, one vote per class.
    query = torch.tensor([[1.0, 0.0, 0.0]])
    bank = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([2, 1])[bank_order]
    scores = knn_scores(query, bank[bank_order], labels, num_classes=3, k=2, temperature=0.1)
    torch.testing.assert_close(scores, torch.tensor([[0.0, 1.0, 1.0]]))
    args = dict(num_classes=3, k=2, temperature=0.1)
    assert knn_accuracy(query, torch.tensor([1]), bank[bank_order], labels, **args)["top1"] == 1.0
    assert knn_accuracy(query, torch.tensor([2]), bank[bank_order], labels, **args)["top1"] == 0.0


def test_top5_is_capped_at_the_number_of_classes() -> None:
    q, q_labels, bank, labels = _data(40, 30, 4, 3, seed=2)
    acc = knn_accuracy(
        torch.from_numpy(q),
        torch.from_numpy(q_labels),
        torch.from_numpy(bank),
        torch.from_numpy(labels),
        num_classes=3,
        k=5,
    )
    assert acc["top5"] == 1.0  # with 3 classes every label is within the top 5
    assert acc["top1"] < 1.0  # random data: the top-1 check is not trivially passing


def test_empty_bank_raises() -> None:
    with pytest.raises(ValueError, match="the kNN bank is empty"):
        knn_scores(
            torch.randn(2, 4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), num_classes=2, k=3, temperature=0.1
        )


def test_bank_and_labels_must_agree() -> None:
    with pytest.raises(ValueError, match="bank has 5 rows but 4 labels"):
        knn_scores(
            torch.randn(2, 4), torch.randn(5, 4), torch.zeros(4, dtype=torch.int64), num_classes=2, k=3, temperature=0.1
        )
