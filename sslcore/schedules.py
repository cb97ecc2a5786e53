"""Schedules as pure functions of the step (as DINO's precomputed arrays, without the arrays)."""

from __future__ import annotations

import math


def cosine_schedule(step: int, max_steps: int, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` at step 0 to ``end`` at ``max_steps`` (held after)."""
    if max_steps <= 0:
        raise ValueError(f"max_steps must be > 0, got {max_steps}")
    progress = min(max(step, 0), max_steps) / max_steps
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(step: int, max_steps: int, warmup_steps: int, peak: float, final: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to ``final``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return cosine_schedule(step - warmup_steps, max(max_steps - warmup_steps, 1), peak, final)


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 256) -> float:
    """The linear scaling rule (Goyal et al. 2017): ``lr = base_lr * batch / 256``."""
    return base_lr * batch_size / reference_batch
