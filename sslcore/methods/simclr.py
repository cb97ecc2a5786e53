"""SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709.

Two augmented views of each image pass through the backbone and an MLP projection head; NT-Xent
pulls each pair together and pushes it away from the other 2N - 2 views of the (global) batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from PIL import Image
from torch import Tensor, nn

from sslcore import distributed
from sslcore.backbones import feature_dim
from sslcore.config import AugmentConfig, SimCLRConfig
from sslcore.health import embedding_std
from sslcore.losses import ntxent
from sslcore.losses.ntxent import multi_positive_ntxent
from sslcore.methods.base import METHODS, StepValues, check_views, plain_values
from sslcore.nn.heads import SimCLRProjectionHead
from sslcore.schedules import StepPlan
from sslcore.transforms import MultiCrop, MultiView, view_transform


@METHODS.register("simclr")
class SimCLR(nn.Module):
    """Backbone + projection head trained with NT-Xent.

    Attributes:
        backbone: maps (B, C, H, W) to features (B, F); the part that is kept after pretraining.
        projection_head: maps features to the contrastive space (B, projection_dim).
    """

    requires_vit: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, cfg: SimCLRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_views = 2 + cfg.num_local_crops
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(
            feature_dim(backbone), cfg.projection_hidden_dim, cfg.projection_dim
        )

    def forward(self, views: list[Tensor], values: StepValues | None = None) -> dict[str, Tensor]:
        """Loss of two views ``[x0, x1]``, each (B, C, H, W), then ``cfg.num_local_crops`` local views;
        SimCLR has no scheduled values."""
        check_views("SimCLR", views, self.num_views)
        x = torch.cat(views[:2], dim=0)  # one backbone pass over both views keeps BN statistics joint
        z0, z1 = self.projection_head(self.backbone(x)).chunk(2, dim=0)
        if len(views) > 2:  # multi-crop: the local views in one pass of their own (another size)
            local = self.projection_head(self.backbone(torch.cat(views[2:], dim=0))).chunk(len(views) - 2, dim=0)
            zs = [z0, z1, *local]
            zs_all, offset = None, 0
            if self.cfg.gather_distributed and distributed.is_distributed():
                zs_all, offset = [distributed.gather_with_grad(z) for z in zs], distributed.rank() * z0.shape[0]
            loss = multi_positive_ntxent(zs, temperature=self.cfg.temperature, views_all=zs_all, offset=offset)
            return {"loss": loss, "embedding_std": embedding_std(z0.detach())}
        z0_all = z1_all = None
        offset = 0
        if self.cfg.gather_distributed and distributed.is_distributed():
            z0_all, z1_all = distributed.gather_with_grad(z0), distributed.gather_with_grad(z1)
            offset = distributed.rank() * z0.shape[0]
        loss = ntxent(z0, z1, temperature=self.cfg.temperature, z0_all=z0_all, z1_all=z1_all, offset=offset)
        return {"loss": loss, "embedding_std": embedding_std(z0.detach())}

    def view_transform(self, augment: AugmentConfig, image_size: int) -> Callable[[Image.Image], list[Tensor]]:
        if self.cfg.num_local_crops == 0:
            return MultiView(view_transform(augment, image_size), 2)
        return MultiCrop(
            [
                view_transform(augment, image_size),
                view_transform(augment, self.cfg.local_crop_size, crop_scale=self.cfg.local_crop_scale),
            ],
            [2, self.cfg.num_local_crops],
        )

    def step_values(self, step: int, plan: StepPlan) -> StepValues:
        return plain_values(step, plan)

    def before_optimizer_step(self, values: StepValues) -> None:
        """Nothing to do: no frozen layers, no clipping."""

    def after_optimizer_step(self, values: StepValues) -> None:
        """Nothing to do: no teacher."""
