"""Self-supervised methods: one file, one ``nn.Module`` each, registered by name.

Importing this package registers every method; :func:`build_method` is the only constructor.
"""

from __future__ import annotations

import torch
from torch import nn

from sslcore.backbones import create_backbone
from sslcore.config import ConfigError, PipelineConfig
from sslcore.methods.barlow_twins import BarlowTwins
from sslcore.methods.base import METHODS, Method, StepValues, as_method, unwrap
from sslcore.methods.beit import BEiT
from sslcore.methods.byol import BYOL
from sslcore.methods.dino import DINO
from sslcore.methods.dinov2 import DINOv2
from sslcore.methods.mae import MAE
from sslcore.methods.moco_v2 import MoCoV2
from sslcore.methods.moco_v3 import MoCoV3
from sslcore.methods.simclr import SimCLR
from sslcore.methods.vicreg import VICReg
from sslcore.nn.vit import is_vit

__all__ = [
    "BYOL",
    "DINO",
    "MAE",
    "METHODS",
    "BEiT",
    "BarlowTwins",
    "DINOv2",
    "Method",
    "MoCoV2",
    "MoCoV3",
    "SimCLR",
    "StepValues",
    "VICReg",
    "as_method",
    "build_method",
    "check_method_backbone",
    "lr_scale",
    "unwrap",
]


def check_method_backbone(cfg: PipelineConfig) -> None:
    """Raise :class:`ConfigError` when ``cfg.method`` needs a ViT and ``cfg.model`` is not one.

    Cheap: the backbone is built on the ``meta`` device (no memory, no initialisation cost).
    """
    if not METHODS.get(cfg.method.name).requires_vit:
        return
    with torch.device("meta"):
        backbone = create_backbone(cfg.model)
    if not is_vit(backbone):
        raise ConfigError(
            f"method.name={cfg.method.name} works on patch tokens and needs a Vision Transformer backbone, "
            f"but model.backbone={cfg.model.backbone} is not a timm VisionTransformer: set e.g. "
            f"model.backbone=vit_tiny_patch16_224 model.patch_size=4 for small images"
        )


def lr_scale(cfg: PipelineConfig) -> float:
    """The factor on ``train.lr`` for ``cfg.method`` on ``cfg.model``: the method's ``lr_scale`` when
    set, else its class's ``vit_lr_scale`` on a ViT (1 on other backbones and for other methods)."""
    explicit: float | None = getattr(cfg.method, "lr_scale", None)
    if explicit is not None:
        return explicit
    vit_scale: float = getattr(METHODS.get(cfg.method.name), "vit_lr_scale", 1.0)
    if vit_scale == 1.0:
        return 1.0
    with torch.device("meta"):
        return vit_scale if is_vit(create_backbone(cfg.model)) else 1.0


def build_method(cfg: PipelineConfig) -> nn.Module:
    """Backbone from ``cfg.model`` wrapped by the method named ``cfg.method.name``.

    Raises:
        ConfigError: the method needs a ViT backbone and ``cfg.model`` is not one.
    """
    check_method_backbone(cfg)
    backbone = create_backbone(cfg.model)
    module: nn.Module = METHODS.get(cfg.method.name)(backbone, cfg.method)
    return module
