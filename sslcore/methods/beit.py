"""BEiT-style masked image modelling with an EMA teacher's targets.

BEiT (Bao et al. 2021, https://arxiv.org/abs/2106.08254) block-masks about 40% of the patches,
replaces them with a learnable mask token and predicts, at each masked position, the visual token
a frozen dVAE tokenizer assigns to the original patch. We keep BEiT's masking, mask token and
per-patch prediction head, and replace the dVAE (a separately trained DALL-E tokenizer we cannot
ship or train here) by the targets of data2vec (Baevski et al. 2022,
https://arxiv.org/abs/2202.03555): the average of the top-K block outputs of an EMA teacher that
sees the unmasked image, each instance-normalised, regressed with a smooth-L1 loss on the masked
patches only. docs/methods.md explains the choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from PIL import Image
from torch import Tensor, nn

from sslcore.config import AugmentConfig
from sslcore.gradients import clip_total_norm_
from sslcore.losses import feature_regression_loss, layer_average_targets
from sslcore.method_config import BEiTConfig
from sslcore.methods.base import METHODS, StepValues, check_views, plain_values
from sslcore.momentum import momentum_copy, update_momentum
from sslcore.nn.masking import block_masks
from sslcore.nn.vit import embed_patches, forward_tokens, patch_grid, patch_tokens, require_vit
from sslcore.schedules import StepPlan, momentum_schedule
from sslcore.transforms import MultiView, minimal_transform


@METHODS.register("beit")
class BEiT(nn.Module):
    """Student ViT with a mask token and a linear prediction head; EMA teacher ViT.

    Attributes:
        backbone: Student ViT (kept after pretraining).
        mask_token: (1, 1, D) learnable embedding of masked patches.
        prediction_head: Linear D -> D on the student's masked patch tokens.
        teacher_backbone: EMA copy of ``backbone`` that sees the unmasked image.
    """

    num_views = 1
    requires_vit: ClassVar[bool] = True

    def __init__(self, backbone: nn.Module, cfg: BEiTConfig) -> None:
        super().__init__()
        vit = require_vit(backbone, "beit")
        self.cfg = cfg
        self.backbone = vit
        dim = vit.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.prediction_head = nn.Linear(dim, dim)
        self.teacher_backbone = momentum_copy(self.backbone)
        self.target_layers = min(cfg.target_layers, len(vit.blocks))

    def forward(self, views: list[Tensor], values: StepValues | None = None) -> dict[str, Tensor]:
        """Loss of one view ``[x]``, (B, C, H, W); the block masks are drawn here."""
        check_views("BEiT", views, self.num_views)
        (x,) = views
        grid = patch_grid(self.backbone, x.shape[-1])
        ratio = (self.cfg.mask_ratio, self.cfg.mask_ratio)
        masks = block_masks(
            x.shape[0], grid, ratio, min_block=self.cfg.min_block_patches, min_aspect=self.cfg.min_aspect
        ).to(x.device)  # (B, N)
        with torch.no_grad():
            targets = layer_average_targets(self._teacher_layers(x))[masks]  # (M, D)
        tokens = forward_tokens(self.backbone, x, masks, self.mask_token)
        prediction = self.prediction_head(patch_tokens(self.backbone, tokens)[masks])  # (M, D)
        loss = feature_regression_loss(prediction, targets, beta=self.cfg.loss_beta)
        return {"loss": loss, "masked_share": masks.float().mean()}

    def _teacher_layers(self, x: Tensor) -> list[Tensor]:
        """Patch tokens after each of the teacher's last ``target_layers`` blocks (before the final
        norm, as data2vec's ``layer_results``), each (B, N, D)."""
        teacher = self.teacher_backbone
        patches, prefix = embed_patches(teacher, x)
        h = teacher.norm_pre(teacher.pos_drop(torch.cat([prefix, patches], dim=1)))
        outputs = []
        blocks = list(teacher.blocks)
        for i, block in enumerate(blocks):
            h = block(h)
            if i >= len(blocks) - self.target_layers:
                outputs.append(h[:, prefix.shape[1] :])
        return outputs

    def view_transform(self, augment: AugmentConfig, image_size: int) -> Callable[[Image.Image], list[Tensor]]:
        return MultiView(minimal_transform(augment, image_size, self.cfg.crop_scale), self.num_views)

    def step_values(self, step: int, plan: StepPlan) -> StepValues:
        momentum = momentum_schedule(step, plan, self.cfg.momentum_start, self.cfg.momentum_end)
        return StepValues(step=step, epoch=plain_values(step, plan).epoch, momentum=momentum)

    def before_optimizer_step(self, values: StepValues) -> None:
        """Clip the total gradient norm (BEiT: 3.0)."""
        if self.cfg.clip_grad is not None:
            clip_total_norm_(self.parameters(), self.cfg.clip_grad)

    def after_optimizer_step(self, values: StepValues) -> None:
        """Move the teacher towards the student."""
        momentum = self.cfg.momentum_start if values.momentum is None else values.momentum
        update_momentum(self.backbone, self.teacher_backbone, momentum)
