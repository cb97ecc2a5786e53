"""MoCo v2, Chen, Fan, Girshick & He 2020, https://arxiv.org/abs/2003.04297.

A query encoder (backbone + MLP head) is trained with InfoNCE against the key encoder's embedding
of another view of the same image (the positive) and a FIFO queue of past keys (the negatives).
The key encoder is an EMA of the query encoder (MoCo, https://arxiv.org/abs/1911.05722, eq. 2).

Not implemented: Shuffle-BN across GPUs (the reference shuffles the key batch between GPUs so that
BatchNorm statistics cannot leak the positive); here BN statistics are per rank and per pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from PIL import Image
from torch import Tensor, nn

from sslcore import distributed
from sslcore.backbones import feature_dim
from sslcore.config import AugmentConfig
from sslcore.losses import infonce
from sslcore.method_config import MoCoV2Config
from sslcore.methods.base import METHODS, StepValues, check_views, momentum_values
from sslcore.momentum import momentum_copy, update_momentum
from sslcore.nn.heads import MoCoV2ProjectionHead
from sslcore.nn.queue import FeatureQueue
from sslcore.nn.vit import is_vit
from sslcore.schedules import StepPlan
from sslcore.transforms import MultiView, view_transform


@METHODS.register("moco_v2")
class MoCoV2(nn.Module):
    """Query encoder, momentum key encoder and a queue of keys.

    Attributes:
        backbone: The query backbone (kept after pretraining).
        projection_head: Query MLP head, features -> (B, projection_dim).
        key_backbone: EMA copy of ``backbone``; never receives gradients.
        key_projection_head: EMA copy of ``projection_head``.
        queue: :class:`FeatureQueue` of ``queue_size`` past keys, the negatives.
    """

    num_views = 2
    requires_vit: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, cfg: MoCoV2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        batch_norm = is_vit(backbone) if cfg.head_batch_norm is None else cfg.head_batch_norm
        self.projection_head = MoCoV2ProjectionHead(
            feature_dim(backbone), cfg.projection_hidden_dim, cfg.projection_dim, batch_norm=batch_norm
        )
        self.key_backbone = momentum_copy(self.backbone)
        self.key_projection_head = momentum_copy(self.projection_head)
        self.queue = FeatureQueue(cfg.queue_size, cfg.projection_dim)

    def forward(self, views: list[Tensor], values: StepValues | None = None) -> dict[str, Tensor]:
        """Loss of ``[x_query, x_key]``, each (B, C, H, W); the keys are enqueued afterwards."""
        check_views("MoCo v2", views, self.num_views)
        x_query, x_key = views
        query = self.projection_head(self.backbone(x_query))
        with torch.no_grad():
            key = self.key_projection_head(self.key_backbone(x_key))
        loss = infonce(query, key, self.queue.keys.clone(), temperature=self.cfg.temperature)
        # The queue's update is part of the method, after the loss has read the old negatives.
        keys = torch.nn.functional.normalize(key, dim=1)
        if self.cfg.gather_distributed:
            keys = distributed.gather_with_grad(keys)
        self.queue.push(keys)
        return {"loss": loss}

    def view_transform(self, augment: AugmentConfig, image_size: int) -> Callable[[Image.Image], list[Tensor]]:
        return MultiView(view_transform(augment, image_size), self.num_views)

    def step_values(self, step: int, plan: StepPlan) -> StepValues:
        return momentum_values(step, plan, self.cfg.momentum_start, self.cfg.momentum_end)

    def before_optimizer_step(self, values: StepValues) -> None:
        """Nothing to do: no frozen layers, no clipping."""

    def after_optimizer_step(self, values: StepValues) -> None:
        """Move the key encoder towards the query encoder."""
        momentum = self.cfg.momentum_start if values.momentum is None else values.momentum
        update_momentum(self.backbone, self.key_backbone, momentum)
        update_momentum(self.projection_head, self.key_projection_head, momentum)
