"""DINO, Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
https://arxiv.org/abs/2104.14294.

Self-distillation without labels: the student (backbone + DINO head) sees 2 global and N local
crops; the teacher, an EMA of the student, sees the 2 global crops. The student matches the
teacher's centred and sharpened distribution over K prototypes for every other view (alg. 1).
The center is an EMA of the teacher's batch mean over all DDP ranks, updated by this method after
the loss is computed; the teacher temperature is warmed up linearly; the last head layer is
frozen during the first epoch(s); gradients are clipped per parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from PIL import Image
from torch import Tensor, nn

from sslcore.backbones import feature_dim
from sslcore.config import AugmentConfig
from sslcore.gradients import cancel_gradients_, clip_per_parameter_
from sslcore.losses import dino_loss, koleo_loss
from sslcore.method_config import DINOConfig, DINOv2Config
from sslcore.methods.base import METHODS, StepValues, plain_values
from sslcore.momentum import momentum_copy, update_momentum
from sslcore.nn.centering import Center, centered_softmax
from sslcore.nn.heads import DINOProjectionHead
from sslcore.nn.vit import features, is_vit, patch_grid
from sslcore.schedules import StepPlan, momentum_schedule, teacher_temperature, weight_decay_schedule
from sslcore.transforms import MultiCrop, view_transform

NUM_GLOBAL_CROPS = 2


def multi_crop(
    augment: AugmentConfig,
    image_size: int,
    *,
    num_local: int,
    local_size: int,
    global_scale: tuple[float, float],
    local_scale: tuple[float, float],
) -> MultiCrop:
    """Two global crops of ``image_size`` and ``num_local`` local crops of ``local_size``."""
    return MultiCrop(
        [
            view_transform(augment, image_size, crop_scale=global_scale),
            view_transform(augment, local_size, crop_scale=local_scale),
        ],
        [NUM_GLOBAL_CROPS, num_local],
    )


def distillation_views(
    cfg: DINOConfig | DINOv2Config, augment: AugmentConfig, image_size: int
) -> Callable[[Image.Image], list[Tensor]]:
    """2 global + ``cfg.num_local_crops`` local crops, as DINO and DINOv2 take them."""
    return multi_crop(
        augment,
        image_size,
        num_local=cfg.num_local_crops,
        local_size=cfg.local_crop_size,
        global_scale=cfg.global_crop_scale,
        local_scale=cfg.local_crop_scale,
    )


def distillation_values(cfg: DINOConfig | DINOv2Config, step: int, plan: StepPlan) -> StepValues:
    """Weight decay, teacher EMA momentum and teacher temperature at ``step`` (DINO and DINOv2)."""
    return StepValues(
        step=step,
        epoch=plain_values(step, plan).epoch,
        weight_decay=weight_decay_schedule(step, plan, cfg.weight_decay_end),
        momentum=momentum_schedule(step, plan, cfg.momentum_start, cfg.momentum_end),
        teacher_temp=teacher_temperature(
            step, plan, cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs
        ),
    )


def global_crops_koleo(features: Tensor) -> Tensor:
    """KoLeo over the pooled features (2B, F) of the two global crops, each crop's batch on its own,
    summed (DINOv2's)."""
    return torch.stack([koleo_loss(part) for part in features.chunk(NUM_GLOBAL_CROPS)]).sum()


def check_local_crop_size(backbone: nn.Module, size: int) -> None:
    """ViTs embed whole patches only: local crops must be a multiple of the patch size."""
    if is_vit(backbone):
        patch_grid(backbone, size)  # type: ignore[arg-type]


@METHODS.register("dino")
class DINO(nn.Module):
    """Student, EMA teacher and the teacher's center.

    Attributes:
        backbone: Student backbone (kept after pretraining).
        head: Student :class:`DINOProjectionHead`, features -> (B, K) logits.
        teacher_backbone: EMA copy of ``backbone``.
        teacher_head: EMA copy of ``head``.
        center: :class:`Center`, the running mean of teacher logits, (1, K).
    """

    requires_vit: ClassVar[bool] = False
    vit_lr_scale: ClassVar[float] = 0.25  # reference ViT lr 5e-4 per 256 images; train.lr defaults to 2e-3
    vit_koleo_weight: ClassVar[float] = 0.1  # DINOv2's; without it the student settles at uniform on ViTs

    def __init__(self, backbone: nn.Module, cfg: DINOConfig) -> None:
        super().__init__()
        check_local_crop_size(backbone, cfg.local_crop_size)
        self.cfg = cfg
        self.num_views = NUM_GLOBAL_CROPS + cfg.num_local_crops
        self.backbone = backbone
        self.head = DINOProjectionHead(
            feature_dim(backbone),
            cfg.hidden_dim,
            cfg.bottleneck_dim,
            cfg.output_dim,
            num_layers=cfg.head_layers,
            batch_norm=cfg.head_batch_norm,
            norm_last_layer=cfg.norm_last_layer,
        )
        self.teacher_backbone = momentum_copy(self.backbone)
        self.teacher_head = momentum_copy(self.head)
        self.center = Center(cfg.output_dim)
        vit_koleo = self.vit_koleo_weight if is_vit(backbone) else 0.0
        self.koleo_weight = vit_koleo if cfg.koleo_loss_weight is None else cfg.koleo_loss_weight

    def forward(self, views: list[Tensor], values: StepValues | None = None) -> dict[str, Tensor]:
        """Loss of ``[global_1, global_2, local_1, ..., local_N]``; globals (B, C, S, S), locals
        (B, C, s, s). Updates the center with this batch's teacher outputs afterwards."""
        if len(views) != self.num_views:
            raise ValueError(
                f"DINO takes {self.num_views} views (2 global + {self.cfg.num_local_crops} local), got {len(views)}"
            )
        teacher_temp = (
            self.cfg.warmup_teacher_temp if values is None or values.teacher_temp is None else values.teacher_temp
        )
        batch = views[0].shape[0]
        globals_ = torch.cat(views[:NUM_GLOBAL_CROPS])
        with torch.no_grad():
            teacher_logits = self.teacher_head(features(self.teacher_backbone, globals_))  # (2B, K)
        # One backbone pass per crop resolution, as the reference does.
        student_globals = features(self.backbone, globals_)  # (2B, F)
        student_logits = [self.head(student_globals)]
        if len(views) > NUM_GLOBAL_CROPS:
            student_logits.append(self.head(features(self.backbone, torch.cat(views[NUM_GLOBAL_CROPS:]))))
        student = torch.cat(student_logits).view(len(views), batch, -1)  # (V, B, K)
        targets = centered_softmax(teacher_logits, self.center.center, teacher_temp)
        distillation = dino_loss(student, targets.view(NUM_GLOBAL_CROPS, batch, -1), student_temp=self.cfg.student_temp)
        self.center.update(teacher_logits, self.cfg.center_momentum)
        entropy = -(targets * targets.clamp(min=1e-12).log()).sum(-1).mean()
        out = {"loss": distillation, "teacher_entropy": entropy.detach()}
        if self.koleo_weight > 0:
            koleo = global_crops_koleo(student_globals)
            out |= {"loss": distillation + self.koleo_weight * koleo, "dino_loss": distillation.detach()}
            out["koleo_loss"] = koleo.detach()
        return out

    def view_transform(self, augment: AugmentConfig, image_size: int) -> Callable[[Image.Image], list[Tensor]]:
        return distillation_views(self.cfg, augment, image_size)

    def step_values(self, step: int, plan: StepPlan) -> StepValues:
        return distillation_values(self.cfg, step, plan)

    def before_optimizer_step(self, values: StepValues) -> None:
        """Clip each student gradient; drop the last layer's during the first epoch(s)."""
        if self.cfg.clip_grad is not None:
            clip_per_parameter_(self.student_parameters(), self.cfg.clip_grad)
        if values.epoch < self.cfg.freeze_last_layer_epochs:
            cancel_gradients_(self.head.last_layer)

    def after_optimizer_step(self, values: StepValues) -> None:
        """Move the teacher towards the student."""
        momentum = self.cfg.momentum_start if values.momentum is None else values.momentum
        update_momentum(self.backbone, self.teacher_backbone, momentum)
        update_momentum(self.head, self.teacher_head, momentum)

    def student_parameters(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.head.parameters()]
