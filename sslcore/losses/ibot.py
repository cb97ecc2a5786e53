"""iBOT's masked-patch self-distillation loss (Zhou et al. 2021, https://arxiv.org/abs/2111.07832,
eq. 2), as weighted in DINOv2 (``iBOTPatchLoss.forward_masked``): each image's masked patches are
averaged first, then the images."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from sslcore.losses.precision import at_least_fp32


def ibot_loss(student_logits: Tensor, teacher_probs: Tensor, mask: Tensor, *, student_temp: float) -> Tensor:
    """Cross-entropy from teacher to student on the masked patches only.

    Args:
        student_logits: (M, K) student patch-head outputs of the masked patches, in the order of
            ``mask.nonzero()`` (row-major over (B, N)).
        teacher_probs: (M, K) teacher targets for the same patches (of the unmasked image).
        mask: (B, N) booleans, M of them ``True``.
        student_temp: ``tau_s`` > 0.

    Returns:
        Scalar: ``mean_b (1 / M_b) sum_{masked n of b} H(P_t, P_s)``; images without masked patches
        count as zero, as in DINOv2.
    """
    if not student_temp > 1e-8:  # also rejects NaN
        raise ValueError(f"student_temp must be > 0, got {student_temp}")
    if student_logits.shape != teacher_probs.shape or student_logits.shape[0] != int(mask.sum()):
        raise ValueError(
            f"expected (M, K) student and teacher with M = mask.sum() = {int(mask.sum())}, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}"
        )
    log_p = F.log_softmax(at_least_fp32(student_logits) / student_temp, dim=-1)
    per_patch = -(at_least_fp32(teacher_probs.detach()) * log_p).sum(dim=-1)  # (M,)
    per_image_count = mask.sum(dim=1, keepdim=True).clamp(min=1).expand_as(mask)[mask]  # (M,)
    return (per_patch / per_image_count).sum() / max(mask.shape[0], 1)
