"""BYOL, Grill et al. 2020, "Bootstrap Your Own Latent", https://arxiv.org/abs/2006.07733.

The online network (backbone + projector + predictor) predicts the target network's projection of
another view; the target is an EMA of the online backbone and projector whose momentum follows
the cosine schedule ``tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2`` (sec. 3.2). The loss is
symmetrised over the two views (eq. 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from PIL import Image
from torch import Tensor, nn

from sslcore.backbones import feature_dim
from sslcore.config import AugmentConfig
from sslcore.losses import byol_loss
from sslcore.method_config import BYOLConfig
from sslcore.methods.base import METHODS, StepValues, check_views, momentum_values
from sslcore.momentum import momentum_copy, update_momentum
from sslcore.nn.heads import BYOLProjectionHead
from sslcore.schedules import StepPlan
from sslcore.transforms import MultiView, view_transform


@METHODS.register("byol")
class BYOL(nn.Module):
    """Online network with predictor, EMA target network without.

    Attributes:
        backbone: Online backbone (kept after pretraining).
        projection_head: Online projector, features -> (B, projection_dim).
        prediction_head: Online predictor, (B, projection_dim) -> (B, projection_dim).
        target_backbone: EMA copy of ``backbone``.
        target_projection_head: EMA copy of ``projection_head``.
    """

    num_views = 2
    requires_vit: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, cfg: BYOLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feature_dim(backbone), cfg.projection_hidden_dim, cfg.projection_dim)
        self.prediction_head = BYOLProjectionHead(cfg.projection_dim, cfg.predictor_hidden_dim, cfg.projection_dim)
        self.target_backbone = momentum_copy(self.backbone)
        self.target_projection_head = momentum_copy(self.projection_head)

    def forward(self, views: list[Tensor], values: StepValues | None = None) -> dict[str, Tensor]:
        """Symmetrised loss of two views ``[x1, x2]``, each (B, C, H, W)."""
        check_views("BYOL", views, self.num_views)
        x = torch.cat(views, dim=0)
        p1, p2 = self.prediction_head(self.projection_head(self.backbone(x))).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projection_head(self.target_backbone(x)).chunk(2)
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return {"loss": loss}

    def view_transform(self, augment: AugmentConfig, image_size: int) -> Callable[[Image.Image], list[Tensor]]:
        return MultiView(view_transform(augment, image_size), self.num_views)

    def step_values(self, step: int, plan: StepPlan) -> StepValues:
        return momentum_values(step, plan, self.cfg.momentum_start, self.cfg.momentum_end)

    def before_optimizer_step(self, values: StepValues) -> None:
        """Nothing to do: no frozen layers, no clipping."""

    def after_optimizer_step(self, values: StepValues) -> None:
        """Move the target network towards the online network."""
        momentum = self.cfg.momentum_start if values.momentum is None else values.momentum
        update_momentum(self.backbone, self.target_backbone, momentum)
        update_momentum(self.projection_head, self.target_projection_head, momentum)
