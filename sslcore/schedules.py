"""Schedules as pure functions of the step (as DINO's precomputed arrays, without the arrays).

The training loop evaluates them once per optimizer step and passes the values into the step
explicitly; nothing here keeps state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StepPlan:
    """How long training runs and the learning-rate and weight-decay envelopes.

    Attributes:
        steps_per_epoch: Optimizer steps per epoch.
        total_steps: Steps of the whole run; every schedule reaches its end value here.
        warmup_steps: Linear learning-rate warm-up length.
        peak_lr: Learning rate after warm-up (already scaled with the batch size).
        final_lr: Learning rate at ``total_steps``.
        weight_decay: Weight decay at step 0 (``train.weight_decay``).
    """

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    final_lr: float
    weight_decay: float = 0.0


def cosine_schedule(step: int, max_steps: int, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` at step 0 to ``end`` at ``max_steps`` (held after)."""
    if max_steps <= 0:
        raise ValueError(f"max_steps must be > 0, got {max_steps}")
    progress = min(max(step, 0), max_steps) / max_steps
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear ramp from ``start`` at step 0 to ``end`` at ``warmup_steps``, then held at ``end``.

    DINO's teacher-temperature schedule (``np.linspace(warmup_teacher_temp, teacher_temp, ...)``
    followed by ``teacher_temp``), per step instead of per epoch.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * max(step, 0) / warmup_steps


def warmup_cosine(step: int, max_steps: int, warmup_steps: int, peak: float, final: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to ``final``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return cosine_schedule(step - warmup_steps, max(max_steps - warmup_steps, 1), peak, final)


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 256) -> float:
    """The linear scaling rule (Goyal et al. 2017): ``lr = base_lr * batch / 256``."""
    return base_lr * batch_size / reference_batch


def momentum_schedule(step: int, plan: StepPlan, start: float, end: float) -> float:
    """EMA momentum of a teacher or key encoder: cosine from ``start`` to ``end`` over the run.

    BYOL (https://arxiv.org/abs/2006.07733, sec. 3.2): ``tau = 1 - (1 - tau_base) *
    (cos(pi k / K) + 1) / 2``; DINO and MoCo v3 use the same rule. ``start == end`` is a constant.
    """
    return cosine_schedule(step, max(plan.total_steps, 1), start, end)


def weight_decay_schedule(step: int, plan: StepPlan, end: float | None) -> float:
    """Weight decay: cosine from ``plan.weight_decay`` to ``end`` (DINO: 0.04 -> 0.4); constant
    ``plan.weight_decay`` when ``end`` is ``None``."""
    if end is None:
        return plan.weight_decay
    return cosine_schedule(step, max(plan.total_steps, 1), plan.weight_decay, end)


def teacher_temperature(step: int, plan: StepPlan, start: float, end: float, warmup_epochs: float) -> float:
    """DINO/iBOT teacher temperature: linear from ``start`` to ``end`` over ``warmup_epochs``, then
    constant (https://arxiv.org/abs/2104.14294, sec. 4 and appendix D)."""
    return linear_warmup(step, round(warmup_epochs * plan.steps_per_epoch), start, end)
