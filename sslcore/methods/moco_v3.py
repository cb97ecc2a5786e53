"""MoCo v3, Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers", https://arxiv.org/abs/2104.02057.

Both views pass through the base encoder (backbone + projector + predictor) and the momentum
encoder (EMA of backbone + projector). The loss is symmetric InfoNCE with the other keys of the
global batch as negatives, ``ctr(q1, k2) + ctr(q2, k1)`` with ``ctr = 2t * CE`` (alg. 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, cast

import torch
from PIL import Image
from torch import Tensor, nn

from sslcore import distributed
from sslcore.backbones import feature_dim
from sslcore.config import AugmentConfig
from sslcore.losses import infonce_in_batch
from sslcore.method_config import MoCoV3Config
from sslcore.methods.base import METHODS, StepValues, check_views, momentum_values
from sslcore.momentum import momentum_copy, update_momentum
from sslcore.nn.heads import MoCoV3Head
from sslcore.nn.vit import is_vit
from sslcore.schedules import StepPlan
from sslcore.transforms import MultiView, view_transform


@METHODS.register("moco_v3")
class MoCoV3(nn.Module):
    """Base encoder with predictor, momentum encoder without.

    Attributes:
        backbone: Base backbone (kept after pretraining).
        projection_head: :class:`MoCoV3Head` projector (3 layers for ViTs, 2 otherwise by default).
        prediction_head: 2-layer :class:`MoCoV3Head` predictor.
        momentum_backbone: EMA copy of ``backbone``.
        momentum_projection_head: EMA copy of ``projection_head``.
    """

    num_views = 2
    requires_vit: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, cfg: MoCoV3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        vit = is_vit(backbone)
        layers = cfg.projection_layers or (3 if vit else 2)
        self.projection_head = MoCoV3Head(
            feature_dim(backbone), cfg.projection_hidden_dim, cfg.projection_dim, layers, last_bn=True
        )
        self.prediction_head = MoCoV3Head(
            cfg.projection_dim, cfg.predictor_hidden_dim, cfg.projection_dim, 2, last_bn=vit
        )
        if vit and cfg.freeze_patch_embed:  # sec. 4.2: a random patch projection stabilises training
            for p in cast(nn.Module, backbone.patch_embed).parameters():
                p.requires_grad_(False)
        self.momentum_backbone = momentum_copy(self.backbone)
        self.momentum_projection_head = momentum_copy(self.projection_head)

    def forward(self, views: list[Tensor], values: StepValues | None = None) -> dict[str, Tensor]:
        """Symmetric loss of two views ``[x1, x2]``, each (B, C, H, W)."""
        check_views("MoCo v3", views, self.num_views)
        batch = views[0].shape[0]
        x = torch.cat(views, dim=0)
        q1, q2 = self.prediction_head(self.projection_head(self.backbone(x))).chunk(2)
        with torch.no_grad():
            k1, k2 = self.momentum_projection_head(self.momentum_backbone(x)).chunk(2)
        offset = 0
        if self.cfg.gather_distributed and distributed.is_distributed():
            k1, k2 = distributed.gather_with_grad(k1), distributed.gather_with_grad(k2)
            offset = distributed.rank() * batch
        t = self.cfg.temperature
        loss = (
            2
            * t
            * (
                infonce_in_batch(q1, k2, temperature=t, offset=offset)
                + infonce_in_batch(q2, k1, temperature=t, offset=offset)
            )
        )
        return {"loss": loss}

    def view_transform(self, augment: AugmentConfig, image_size: int) -> Callable[[Image.Image], list[Tensor]]:
        return MultiView(view_transform(augment, image_size), self.num_views)

    def step_values(self, step: int, plan: StepPlan) -> StepValues:
        return momentum_values(step, plan, self.cfg.momentum_start, self.cfg.momentum_end)

    def before_optimizer_step(self, values: StepValues) -> None:
        """Nothing to do: no frozen layers, no clipping."""

    def after_optimizer_step(self, values: StepValues) -> None:
        """Move the momentum encoder towards the base encoder."""
        momentum = self.cfg.momentum_start if values.momentum is None else values.momentum
        update_momentum(self.backbone, self.momentum_backbone, momentum)
        update_momentum(self.projection_head, self.momentum_projection_head, momentum)
