"""Gradient edits between ``backward`` and the optimizer step, called by methods explicitly."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def clip_per_parameter_(parameters: Iterable[nn.Parameter], max_norm: float) -> None:
    """DINO's ``clip_gradients``: scale each parameter's gradient to norm at most ``max_norm``
    (each tensor separately, unlike ``clip_grad_norm_``)."""
    for p in parameters:
        if p.grad is not None:
            norm = p.grad.detach().norm(2)
            p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


def clip_total_norm_(parameters: Iterable[nn.Parameter], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_``: one scale for all ``parameters`` together."""
    torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], max_norm)


def cancel_gradients_(module: nn.Module) -> None:
    """Drop ``module``'s gradients so that the optimizer step leaves it unchanged (DINO's
    ``cancel_gradients_last_layer``; AdamW and SGD skip parameters without a gradient)."""
    for p in module.parameters():
        p.grad = None
