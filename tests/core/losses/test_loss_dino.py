"""sslcore.losses.dino and sslcore.nn.centering: DINO's cross-view loss, centering, sharpening and
Sinkhorn-Knopp."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sslcore.losses import dino_loss
from sslcore.nn.centering import Center, centered_softmax, sinkhorn_knopp


def _naive_dino(student: list[torch.Tensor], teacher: list[torch.Tensor], student_temp: float) -> float:
    """The reference DINOLoss.forward loop, teacher targets already computed."""
    total, terms = 0.0, 0
    for iq, q in enumerate(teacher):
        for v, s in enumerate(student):
            if v == iq:
                continue
            logp = F.log_softmax(s / student_temp, dim=-1)
            total += float((-(q * logp).sum(dim=-1)).mean())
            terms += 1
    return total / terms


@pytest.mark.parametrize("views", [2, 3, 6])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("student_temp", [0.1, 0.5])
def test_matches_the_reference_loop(views: int, batch: int, student_temp: float) -> None:
    g = torch.Generator().manual_seed(views * 10 + batch)
    k = 7
    student = torch.randn(views, batch, k, generator=g, dtype=torch.float64)
    teacher = F.softmax(torch.randn(2, batch, k, generator=g, dtype=torch.float64) / 0.04, dim=-1)
    got = dino_loss(student, teacher, student_temp=student_temp).item()
    assert got == pytest.approx(_naive_dino(list(student), list(teacher), student_temp), rel=1e-6)


@pytest.mark.parametrize("k", [2, 10, 1000])
def test_uniform_outputs_give_log_k(k: int) -> None:
    student = torch.full((4, 3, k), 0.7)
    teacher = centered_softmax(torch.full((6, k), -1.3), torch.zeros(1, k), 0.04).view(2, 3, k)
    assert dino_loss(student, teacher, student_temp=0.1).item() == pytest.approx(math.log(k), rel=1e-5)


def test_two_views_pair_each_teacher_with_the_other_student_only() -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    teacher = F.softmax(torch.randn(2, 3, 5, generator=g, dtype=torch.float64), dim=-1)

    def cross_entropy(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return -(t * F.log_softmax(s / 0.1, dim=-1)).sum(-1).mean()

    expected = 0.5 * (cross_entropy(teacher[0], student[1]) + cross_entropy(teacher[1], student[0]))
    torch.testing.assert_close(dino_loss(student, teacher, student_temp=0.1), expected)


def test_invariant_to_batch_order_and_local_crop_order() -> None:
    g = torch.Generator().manual_seed(1)
    student = torch.randn(5, 4, 6, generator=g)
    teacher = F.softmax(torch.randn(2, 4, 6, generator=g), dim=-1)
    base = dino_loss(student, teacher, student_temp=0.1)
    perm = torch.randperm(4, generator=g)
    torch.testing.assert_close(dino_loss(student[:, perm], teacher[:, perm], student_temp=0.1), base)
    locals_swapped = student[[0, 1, 4, 2, 3]]
    torch.testing.assert_close(dino_loss(locals_swapped, teacher, student_temp=0.1), base)


def test_gradient_reaches_student_only() -> None:
    student = torch.randn(3, 2, 5, requires_grad=True)
    teacher = torch.rand(2, 2, 5, requires_grad=True)
    dino_loss(student, teacher / teacher.sum(-1, keepdim=True), student_temp=0.1).backward()
    assert student.grad is not None and teacher.grad is None


def test_centered_softmax_is_the_reference_formula() -> None:
    g = torch.Generator().manual_seed(2)
    logits, center = torch.randn(4, 9, generator=g), torch.randn(1, 9, generator=g)
    expected = torch.exp((logits - center) / 0.04)
    expected /= expected.sum(dim=1, keepdim=True)
    torch.testing.assert_close(centered_softmax(logits, center, 0.04), expected)


@pytest.mark.parametrize("momentum", [0.0, 0.9, 0.996])
def test_center_update_is_the_ema_of_the_batch_mean(momentum: float) -> None:
    g = torch.Generator().manual_seed(3)
    center = Center(6)
    first = torch.randn(1, 6, generator=g)
    center.center.copy_(first)
    batch = torch.randn(10, 6, generator=g)
    returned = center.update(batch, momentum)
    torch.testing.assert_close(returned, batch.mean(dim=0, keepdim=True))
    torch.testing.assert_close(center.center, momentum * first + (1 - momentum) * batch.mean(dim=0, keepdim=True))
    assert "center" in center.state_dict()


def _naive_sinkhorn(logits: torch.Tensor, temp: float, iterations: int) -> torch.Tensor:
    """DINOv2's ``sinkhorn_knopp_teacher`` for one process, written out."""
    q = torch.exp(logits / temp).t()
    b, k = q.shape[1], q.shape[0]
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


@pytest.mark.parametrize(("n", "k"), [(8, 4), (5, 16), (32, 3)])
def test_sinkhorn_matches_the_reference(n: int, k: int) -> None:
    g = torch.Generator().manual_seed(n + k)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 0.3
    got = sinkhorn_knopp(logits, 0.1, iterations=3)
    torch.testing.assert_close(got, _naive_sinkhorn(logits, 0.1, 3))
    torch.testing.assert_close(got.sum(dim=1), torch.ones(n, dtype=got.dtype))  # each row a distribution


def test_sinkhorn_converges_to_equal_prototype_mass() -> None:
    logits = torch.randn(24, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = sinkhorn_knopp(logits, 0.5, iterations=200)
    torch.testing.assert_close(got.sum(dim=0), torch.full((4,), 6.0, dtype=got.dtype), rtol=1e-6, atol=1e-6)
