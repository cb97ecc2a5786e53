"""sslcore.losses.ibot: masked-patch cross-entropy, per-image mean over masked patches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sslcore.losses import ibot_loss


def _naive(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temp: float) -> float:
    """Dense (B, N, K) inputs; average each image's masked patches, then all images."""
    total = 0.0
    for b in range(mask.shape[0]):
        idx = mask[b].nonzero().flatten().tolist()
        if not idx:
            continue
        per = [float(-(teacher[b, n] * F.log_softmax(student[b, n] / temp, dim=-1)).sum()) for n in idx]
        total += sum(per) / len(per)
    return total / mask.shape[0]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("patches", [4, 9])
@pytest.mark.parametrize("temp", [0.1, 0.3])
def test_matches_naive_per_image_average(batch: int, patches: int, temp: float) -> None:
    g = torch.Generator().manual_seed(batch * patches)
    k = 6
    student = torch.randn(batch, patches, k, generator=g, dtype=torch.float64)
    teacher = F.softmax(torch.randn(batch, patches, k, generator=g, dtype=torch.float64), dim=-1)
    mask = torch.rand(batch, patches, generator=g) < 0.5
    mask[0, 0] = True
    got = ibot_loss(student[mask], teacher[mask], mask, student_temp=temp).item()
    assert got == pytest.approx(_naive(student, teacher, mask, temp), rel=1e-9)


def test_uniform_outputs_give_log_k_and_unmasked_images_count_zero() -> None:
    k = 32
    mask = torch.tensor([[True, True, False], [False, False, False]])
    student = torch.zeros(2, k)
    teacher = torch.full((2, k), 1.0 / k)
    # one image with masks (loss log K), one without (0): mean over the 2 images
    assert ibot_loss(student, teacher, mask, student_temp=0.1).item() == pytest.approx(math.log(k) / 2, rel=1e-6)


def test_visible_patches_do_not_matter_and_shapes_are_checked() -> None:
    mask = torch.tensor([[True, False]])
    with pytest.raises(ValueError, match=r"M = mask\.sum"):
        ibot_loss(torch.zeros(2, 4), torch.zeros(2, 4), mask, student_temp=0.1)
