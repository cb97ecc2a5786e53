"""DINO's self-distillation loss (Caron et al. 2021, https://arxiv.org/abs/2104.14294, eq. 3 and
alg. 1): cross-entropy from each teacher global view to every *other* student view.

Centering and sharpening of the teacher are target construction, done by the method with
:mod:`sslcore.nn.centering`; this function only sees the finished target distributions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sslcore.losses.precision import at_least_fp32


def dino_loss(student_logits: Tensor, teacher_probs: Tensor, *, student_temp: float) -> Tensor:
    """Mean over (teacher view g, student view v != g) pairs of ``H(P_t^g, P_s^v)``.

    Args:
        student_logits: (V, B, K) student head outputs for V views (the G global views first).
        teacher_probs: (G, B, K) teacher target distributions for the G global views (rows sum to 1).
        student_temp: Student softmax temperature ``tau_s`` > 0.

    Returns:
        Scalar: the loss averaged over the batch and over the ``G * V - G`` pairs.
    """
    if not student_temp > 1e-8:  # also rejects NaN
        raise ValueError(f"student_temp must be > 0, got {student_temp}")
    views, globals_ = student_logits.shape[0], teacher_probs.shape[0]
    if globals_ > views or student_logits.shape[1:] != teacher_probs.shape[1:]:
        raise ValueError(
            f"expected student (V, B, K) and teacher (G <= V, B, K), got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_probs.shape)}"
        )
    log_p = F.log_softmax(at_least_fp32(student_logits) / student_temp, dim=-1)  # (V, B, K)
    # v = student views, g = teacher views, b = batch, k = prototypes: H for every pair, (G, V).
    cross = -torch.einsum("gbk,vbk->gv", at_least_fp32(teacher_probs.detach()), log_p) / student_logits.shape[1]
    pairs = ~torch.eye(globals_, views, dtype=torch.bool, device=cross.device)
    return cross[pairs].mean()
