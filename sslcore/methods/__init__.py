"""Self-supervised methods: one file, one ``nn.Module`` each, registered by name."""

from __future__ import annotations

from torch import nn

from sslcore.backbones import create_backbone
from sslcore.config import PipelineConfig
from sslcore.methods.base import METHODS
from sslcore.methods.simclr import SimCLR

__all__ = ["METHODS", "SimCLR", "build_method"]


def build_method(cfg: PipelineConfig) -> nn.Module:
    """Backbone from ``cfg.model`` wrapped by the method named ``cfg.method.name``."""
    backbone = create_backbone(cfg.model)
    return METHODS.get(cfg.method.name)(backbone, cfg.method)
