"""DINOv2-style pretraining, Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without
Supervision", https://arxiv.org/abs/2304.07193 (sec. 4).

Three terms on a ViT:

* DINO's image-level self-distillation on the pooled token, over 2 global and N local crops;
* iBOT's masked-patch self-distillation (Zhou et al. 2021, https://arxiv.org/abs/2111.07832): the
  student sees block-masked global crops (masked patches replaced by a learnable mask token) and
  predicts, at each masked patch, the teacher's distribution for that patch of the unmasked crop;
* the KoLeo regulariser on the student's pooled global features.

Teacher targets are centred with Sinkhorn-Knopp (DINOv2) or with DINO/iBOT's EMA centers. The
teacher is an EMA of the student; heads' last layers are frozen during the first epoch(s);
gradients are clipped per module. Not included: DINOv2's stochastic depth, LayerScale and
high-resolution adaptation phase, which belong to its ViT recipe rather than the objective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from PIL import Image
from torch import Tensor, nn

from sslcore.config import AugmentConfig
from sslcore.gradients import cancel_gradients_, clip_total_norm_
from sslcore.losses import dino_loss, ibot_loss
from sslcore.method_config import DINOv2Config
from sslcore.methods.base import METHODS, StepValues
from sslcore.methods.dino import (
    NUM_GLOBAL_CROPS,
    check_local_crop_size,
    distillation_values,
    distillation_views,
    global_crops_koleo,
)
from sslcore.momentum import momentum_copy, update_momentum
from sslcore.nn.centering import Center, centered_softmax, sinkhorn_knopp
from sslcore.nn.heads import DINOProjectionHead
from sslcore.nn.masking import block_masks
from sslcore.nn.vit import features, forward_tokens, patch_grid, patch_tokens, pooled, require_vit
from sslcore.schedules import StepPlan


@METHODS.register("dinov2")
class DINOv2(nn.Module):
    """Student ViT with a mask token, DINO and iBOT heads, their EMA teachers and centers.

    Attributes:
        backbone: Student ViT (kept after pretraining).
        mask_token: (1, 1, D) learnable embedding of masked patches.
        dino_head: Image-level :class:`DINOProjectionHead`, (B, D) -> (B, K).
        ibot_head: Patch-level head, (M, D) -> (M, K_ibot); the DINO head itself when not separate.
        teacher_backbone, teacher_dino_head, teacher_ibot_head: EMA copies.
        dino_center, ibot_center: :class:`Center` modules, used when ``centering="center"``.
    """

    requires_vit: ClassVar[bool] = True

    def __init__(self, backbone: nn.Module, cfg: DINOv2Config) -> None:
        super().__init__()
        vit = require_vit(backbone, "dinov2")
        check_local_crop_size(vit, cfg.local_crop_size)
        self.cfg = cfg
        self.num_views = NUM_GLOBAL_CROPS + cfg.num_local_crops
        self.backbone = vit
        dim = vit.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dino_head = self._head(dim, cfg.output_dim)
        self.ibot_head = self._head(dim, cfg.ibot_output_dim) if cfg.separate_ibot_head else self.dino_head
        if not cfg.separate_ibot_head and cfg.ibot_output_dim != cfg.output_dim:
            raise ValueError("a shared DINO/iBOT head needs ibot_output_dim == output_dim")
        self.teacher_backbone = momentum_copy(self.backbone)
        self.teacher_dino_head = momentum_copy(self.dino_head)
        self.teacher_ibot_head = momentum_copy(self.ibot_head) if cfg.separate_ibot_head else self.teacher_dino_head
        self.dino_center = Center(cfg.output_dim)
        self.ibot_center = Center(cfg.ibot_output_dim)

    def _head(self, dim: int, output_dim: int) -> DINOProjectionHead:
        cfg = self.cfg
        return DINOProjectionHead(
            dim,
            cfg.hidden_dim,
            cfg.bottleneck_dim,
            output_dim,
            num_layers=cfg.head_layers,
            norm_last_layer=cfg.norm_last_layer,
        )

    def _targets(self, logits: Tensor, center: Center, temperature: float) -> Tensor:
        if self.cfg.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temperature)
        return centered_softmax(logits, center.center, temperature)

    def forward(self, views: list[Tensor], values: StepValues | None = None) -> dict[str, Tensor]:
        """Loss of ``[global_1, global_2, local_1, ..., local_N]``; globals (B, C, S, S), locals
        (B, C, s, s). Masks are drawn here; EMA centers (if used) are updated afterwards."""
        cfg = self.cfg
        if len(views) != self.num_views:
            raise ValueError(
                f"DINOv2 takes {self.num_views} views (2 global + {cfg.num_local_crops} local), got {len(views)}"
            )
        teacher_temp = cfg.warmup_teacher_temp if values is None or values.teacher_temp is None else values.teacher_temp
        batch = views[0].shape[0]
        globals_ = torch.cat(views[:NUM_GLOBAL_CROPS])  # (2B, C, S, S)
        grid = patch_grid(self.backbone, globals_.shape[-1])
        masks = block_masks(
            globals_.shape[0],
            grid,
            (cfg.mask_ratio_min, cfg.mask_ratio_max),
            probability=cfg.mask_probability,
            min_block=cfg.min_block_patches,
        ).to(globals_.device)  # (2B, N)

        with torch.no_grad():
            t_tokens = forward_tokens(self.teacher_backbone, globals_)
            t_dino = self.teacher_dino_head(pooled(self.teacher_backbone, t_tokens))  # (2B, K)
            t_ibot = self.teacher_ibot_head(patch_tokens(self.teacher_backbone, t_tokens)[masks])  # (M, K2)
            dino_targets = self._targets(t_dino, self.dino_center, teacher_temp)
            ibot_targets = self._targets(t_ibot, self.ibot_center, teacher_temp)

        s_tokens = forward_tokens(self.backbone, globals_, masks, self.mask_token)
        s_global = pooled(self.backbone, s_tokens)  # (2B, D)
        student = [self.dino_head(s_global)]
        if len(views) > NUM_GLOBAL_CROPS:
            student.append(self.dino_head(features(self.backbone, torch.cat(views[NUM_GLOBAL_CROPS:]))))
        s_dino = torch.cat(student).view(len(views), batch, -1)
        s_ibot = self.ibot_head(patch_tokens(self.backbone, s_tokens)[masks])

        dino = dino_loss(s_dino, dino_targets.view(NUM_GLOBAL_CROPS, batch, -1), student_temp=cfg.student_temp)
        ibot = ibot_loss(s_ibot, ibot_targets, masks, student_temp=cfg.student_temp)
        koleo = global_crops_koleo(s_global)
        loss = cfg.dino_loss_weight * dino + cfg.ibot_loss_weight * ibot + cfg.koleo_loss_weight * koleo

        if cfg.centering == "center":
            self.dino_center.update(t_dino, cfg.center_momentum)
            self.ibot_center.update(t_ibot, cfg.center_momentum)
        return {
            "loss": loss,
            "dino_loss": dino.detach(),
            "ibot_loss": ibot.detach(),
            "koleo_loss": koleo.detach(),
            "masked_share": masks.float().mean(),
        }

    def view_transform(self, augment: AugmentConfig, image_size: int) -> Callable[[Image.Image], list[Tensor]]:
        return distillation_views(self.cfg, augment, image_size)

    def step_values(self, step: int, plan: StepPlan) -> StepValues:
        return distillation_values(self.cfg, step, plan)

    def before_optimizer_step(self, values: StepValues) -> None:
        """Clip the gradient norm of each student module; drop the heads' last layers' gradients
        during the first epoch(s)."""
        if self.cfg.clip_grad is not None:
            clip_total_norm_([*self.backbone.parameters(), self.mask_token], self.cfg.clip_grad)
            for head in self._student_heads():
                clip_total_norm_(head.parameters(), self.cfg.clip_grad)
        if values.epoch < self.cfg.freeze_last_layer_epochs:
            for head in self._student_heads():
                cancel_gradients_(head.last_layer)

    def after_optimizer_step(self, values: StepValues) -> None:
        """Move the teacher towards the student."""
        momentum = self.cfg.momentum_start if values.momentum is None else values.momentum
        update_momentum(self.backbone, self.teacher_backbone, momentum)
        update_momentum(self.dino_head, self.teacher_dino_head, momentum)
        if self.cfg.separate_ibot_head:
            update_momentum(self.ibot_head, self.teacher_ibot_head, momentum)

    def _student_heads(self) -> list[DINOProjectionHead]:
        return [self.dino_head, self.ibot_head] if self.cfg.separate_ibot_head else [self.dino_head]
