"""MAE, He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners",
https://arxiv.org/abs/2111.06377.

The ViT encoder sees only a random 25% of the patches (no mask tokens); a light transformer
decoder gets the encoded visible patches plus a shared mask token at every masked position and
reconstructs the pixels. The loss is the MSE on masked patches only, optionally against
per-patch normalised pixels (``models_mae.py``: ``random_masking``, ``forward_encoder``,
``forward_decoder``, ``forward_loss``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from PIL import Image
from torch import Tensor, nn

from sslcore.config import AugmentConfig
from sslcore.losses import mae_loss, patchify
from sslcore.method_config import MAEConfig
from sslcore.methods.base import METHODS, StepValues, check_views, plain_values
from sslcore.nn.decoders import MAEDecoder
from sslcore.nn.masking import random_masking
from sslcore.nn.vit import embed_patches, encode, require_vit
from sslcore.schedules import StepPlan
from sslcore.transforms import MultiView, minimal_transform


@METHODS.register("mae")
class MAE(nn.Module):
    """ViT encoder on visible patches + :class:`MAEDecoder`.

    Attributes:
        backbone: The ViT encoder (kept after pretraining).
        decoder: Reconstructs (B, N, p*p*C) pixels from the visible tokens.
    """

    num_views = 1
    requires_vit: ClassVar[bool] = True

    def __init__(self, backbone: nn.Module, cfg: MAEConfig) -> None:
        super().__init__()
        vit = require_vit(backbone, "mae")
        self.cfg = cfg
        self.backbone = vit
        self.patch_size = vit.patch_embed.patch_size[0]
        grid = tuple(vit.patch_embed.grid_size)
        self.decoder = MAEDecoder(
            (grid[0], grid[1]),
            vit.embed_dim,
            cfg.decoder_dim,
            cfg.decoder_depth,
            cfg.decoder_heads,
            self.patch_size**2 * vit.patch_embed.proj.in_channels,
        )

    def forward(self, views: list[Tensor], values: StepValues | None = None) -> dict[str, Tensor]:
        """Reconstruction loss of one view ``[x]``, (B, C, H, W)."""
        check_views("MAE", views, self.num_views)
        (x,) = views
        patches, prefix = embed_patches(self.backbone, x)  # (B, N, D), (B, P, D)
        b, n, d = patches.shape
        ids_keep, mask = random_masking(b, n, self.cfg.mask_ratio, x.device)
        visible = patches.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        tokens = encode(self.backbone, visible, prefix)  # (B, P + N_keep, D)
        prediction = self.decoder(tokens, ids_keep, n, prefix.shape[1])  # (B, N, p*p*C)
        loss = mae_loss(prediction, patchify(x, self.patch_size), mask, norm_pix=self.cfg.norm_pix_loss)
        return {"loss": loss}

    def view_transform(self, augment: AugmentConfig, image_size: int) -> Callable[[Image.Image], list[Tensor]]:
        return MultiView(minimal_transform(augment, image_size, self.cfg.crop_scale), self.num_views)

    def step_values(self, step: int, plan: StepPlan) -> StepValues:
        return plain_values(step, plan)

    def before_optimizer_step(self, values: StepValues) -> None:
        """Nothing to do: the reference neither clips nor freezes."""

    def after_optimizer_step(self, values: StepValues) -> None:
        """Nothing to do: no teacher."""
