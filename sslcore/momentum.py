"""Momentum (EMA) teachers: copy a student, freeze the copy, move it towards the student.

MoCo's key encoder (https://arxiv.org/abs/1911.05722, eq. 2), BYOL's target network
(https://arxiv.org/abs/2006.07733, sec. 3.1) and DINO's teacher (https://arxiv.org/abs/2104.14294,
sec. 3.1) all follow ``theta_t <- m * theta_t + (1 - m) * theta_s`` after each optimizer step.
The training loop calls :func:`update_momentum` explicitly; no forward pass changes a teacher.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def momentum_copy(student: M) -> M:
    """A frozen deep copy of ``student``: same weights, ``requires_grad=False`` everywhere."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def update_momentum(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student``, parameter by parameter.

    Buffers (BatchNorm running statistics) are not averaged, as in the reference implementations:
    each network keeps the statistics of the batches it saw.

    Args:
        student: The trained network.
        teacher: A network with the same parameter shapes (from :func:`momentum_copy`).
        momentum: ``m`` in [0, 1]; 1 leaves the teacher unchanged, 0 copies the student.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    s_params = list(student.parameters())
    t_params = list(teacher.parameters())
    if len(s_params) != len(t_params):
        raise ValueError(f"student has {len(s_params)} parameters but teacher has {len(t_params)}")
    for s, t in zip(s_params, t_params, strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
