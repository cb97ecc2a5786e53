"""The method registry. A method is an ``nn.Module`` with a ``backbone`` attribute whose
``forward(views)`` takes a list of augmented views, each (B, C, H, W), and returns a dict with
``"loss"`` and detached scalars to log."""

from __future__ import annotations

from typing import Any

from sslcore.registry import Registry

METHODS: Registry[Any] = Registry("method")
