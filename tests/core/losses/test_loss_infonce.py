"""sslcore.losses.infonce: MoCo's queue InfoNCE and MoCo v3's in-batch InfoNCE against naive loops
and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sslcore.losses import infonce, infonce_in_batch


def _naive_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> float:
    total = 0.0
    for i in range(q.shape[0]):
        qi = q[i] / q[i].norm()
        pos = math.exp(float(qi @ (k[i] / k[i].norm())) / t)
        neg = sum(math.exp(float(qi @ (n / n.norm())) / t) for n in queue)
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def _naive_in_batch(q: torch.Tensor, keys: torch.Tensor, t: float, offset: int) -> float:
    total = 0.0
    for i in range(q.shape[0]):
        qi = q[i] / q[i].norm()
        logits = [math.exp(float(qi @ (k / k.norm())) / t) for k in keys]
        total += -math.log(logits[offset + i] / sum(logits))
    return total / q.shape[0]


@pytest.mark.parametrize("batch", [1, 4, 7])
@pytest.mark.parametrize("dim", [3, 16])
@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
def test_queue_infonce_matches_naive(batch: int, dim: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(batch * 100 + dim)
    q, k = torch.randn(2, batch, dim, generator=g, dtype=torch.float64)
    queue = torch.randn(11, dim, generator=g, dtype=torch.float64)
    got = infonce(q, k, queue, temperature=temperature).item()
    assert got == pytest.approx(_naive_queue(q, k, queue, temperature), rel=1e-9)


def test_queue_infonce_closed_form() -> None:
    """Positive equal to the query, negatives orthogonal to it: -log(e^(1/t) / (e^(1/t) + K))."""
    t, queue_size = 0.2, 6
    q = torch.zeros(3, 8, dtype=torch.float64)
    q[:, 0] = torch.tensor([1.0, 2.0, 0.5])
    queue = torch.zeros(queue_size, 8, dtype=torch.float64)
    queue[torch.arange(queue_size), 1 + torch.arange(queue_size)] = 1.0
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + queue_size))
    assert infonce(q, q.clone(), queue, temperature=t).item() == pytest.approx(expected, rel=1e-12)


def test_queue_infonce_is_order_invariant() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, queue = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(9, 8, generator=g)
    base = infonce(q, k, queue, temperature=0.2)
    perm, qperm = torch.randperm(5, generator=g), torch.randperm(9, generator=g)
    torch.testing.assert_close(infonce(q[perm], k[perm], queue[qperm], temperature=0.2), base)


def test_no_gradient_reaches_keys_or_queue() -> None:
    q = torch.randn(4, 8, requires_grad=True)
    k = torch.randn(4, 8, requires_grad=True)
    queue = torch.randn(6, 8, requires_grad=True)
    infonce(q, k, queue, temperature=0.2).backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


@pytest.mark.parametrize("batch", [1, 3, 6])
@pytest.mark.parametrize("temperature", [0.1, 1.0])
@pytest.mark.parametrize("ranks", [1, 3])
def test_in_batch_infonce_matches_naive(batch: int, temperature: float, ranks: int) -> None:
    g = torch.Generator().manual_seed(batch)
    keys = torch.randn(batch * ranks, 5, generator=g, dtype=torch.float64)
    q = torch.randn(batch, 5, generator=g, dtype=torch.float64)
    for rank in range(ranks):
        got = infonce_in_batch(q, keys, temperature=temperature, offset=rank * batch).item()
        assert got == pytest.approx(_naive_in_batch(q, keys, temperature, rank * batch), rel=1e-9)


def test_in_batch_infonce_of_identical_directions_is_log_n() -> None:
    """Every query and key points the same way: all N logits tie, so the loss is log(N)."""
    direction = F.normalize(torch.randn(1, 8), dim=1)
    q = direction * torch.rand(4, 1).add(0.5)
    keys = direction * torch.rand(12, 1).add(0.5)
    assert infonce_in_batch(q, keys, temperature=0.3, offset=4).item() == pytest.approx(math.log(12), rel=1e-5)


@pytest.mark.parametrize("fn", ["queue", "batch"])
def test_rejects_non_positive_temperature(fn: str) -> None:
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        if fn == "queue":
            infonce(x, x, x, temperature=0.0)
        else:
            infonce_in_batch(x, x, temperature=0.0)
