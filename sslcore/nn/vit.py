"""Token-level access to a timm ``VisionTransformer``: masked or partial inputs, any image size.

Masked image modelling needs what ``forward_features`` does, split in two: embed the patches (with
position embeddings), then let the method drop or replace tokens before the transformer blocks.
These functions reuse the model's own modules (``patch_embed``, ``pos_embed``, ``cls_token``,
``blocks``, ``norm``, ``forward_head``), so the weights are the backbone's and are saved under its
keys. Position embeddings are resampled with timm's ``resample_abs_pos_embed`` when the patch grid
differs from the configured one (DINO's small local crops).

Shapes: B = batch, N = patches, P = prefix tokens (class and register tokens), D = embedding width.
"""

from __future__ import annotations

from typing import cast

import torch
from timm.layers.pos_embed import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from sslcore.config import ConfigError


def is_vit(backbone: nn.Module) -> bool:
    """Whether ``backbone`` is a timm ``VisionTransformer`` with a convolutional patch embedding."""
    return isinstance(backbone, VisionTransformer) and isinstance(
        getattr(backbone.patch_embed, "proj", None), nn.Conv2d
    )


def require_vit(backbone: nn.Module, method: str) -> VisionTransformer:
    """Return ``backbone`` as a ViT, or raise :class:`ConfigError` saying how to choose one."""
    if not is_vit(backbone):
        raise ConfigError(
            f"method.name={method} works on patch tokens and needs a Vision Transformer backbone "
            f"(a timm VisionTransformer), not {type(backbone).__name__}: set e.g. "
            f"model.backbone=vit_tiny_patch16_224 model.patch_size=4 for small images"
        )
    return cast(VisionTransformer, backbone)


def patch_grid(vit: VisionTransformer, image_size: int) -> tuple[int, int]:
    """Patches per side for square ``image_size`` inputs."""
    ph, pw = vit.patch_embed.patch_size
    if image_size % ph or image_size % pw:
        raise ConfigError(
            f"image size {image_size} is not a multiple of the ViT patch size {ph}: "
            f"change model.image_size or model.patch_size"
        )
    return image_size // ph, image_size // pw


def embed_patches(
    vit: VisionTransformer, x: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Patch and prefix tokens with position embeddings added, before the transformer blocks.

    Args:
        vit: The backbone.
        x: Images (B, C, H, W); H and W multiples of the patch size, any value.
        mask: Optional (B, N) booleans; masked patch embeddings are replaced by ``mask_token``
            before position embeddings are added (BEiT, iBOT).
        mask_token: (1, 1, D) learnable embedding, required with ``mask``.

    Returns:
        ``patches`` (B, N, D) and ``prefix`` (B, P, D) tokens.
    """
    pe = vit.patch_embed
    tokens = pe.proj(x)  # (B, D, h, w)
    grid = (tokens.shape[-2], tokens.shape[-1])
    tokens = pe.norm(tokens.flatten(2).transpose(1, 2))  # (B, N, D)
    if mask is not None:
        if mask_token is None:
            raise ValueError("a mask needs a mask_token")
        tokens = torch.where(mask.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)
    b = tokens.shape[0]
    prefix_parts = []
    if vit.cls_token is not None:
        prefix_parts.append(vit.cls_token.expand(b, -1, -1))
    if vit.reg_token is not None:
        prefix_parts.append(vit.reg_token.expand(b, -1, -1))
    prefix = torch.cat(prefix_parts, dim=1) if prefix_parts else tokens[:, :0]
    if vit.pos_embed is not None:
        embedded_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        pos = vit.pos_embed
        if grid != tuple(pe.grid_size):
            pos = resample_abs_pos_embed(pos, new_size=grid, old_size=pe.grid_size, num_prefix_tokens=embedded_prefix)
        tokens = tokens + pos[:, embedded_prefix:]
        if embedded_prefix:
            prefix = prefix + pos[:, :embedded_prefix]
    return tokens, prefix


def encode(vit: VisionTransformer, patches: Tensor, prefix: Tensor) -> Tensor:
    """Run the blocks and the final norm on ``[prefix, patches]``.

    Args:
        patches: (B, N', D) patch tokens, all N patches or a subset (MAE's visible ones).
        prefix: (B, P, D) class/register tokens.

    Returns:
        (B, P + N', D) normalised tokens, as ``forward_features`` returns them.
    """
    x = vit.pos_drop(torch.cat([prefix, patches], dim=1))
    x = vit.norm_pre(x)
    x = vit.blocks(x)
    out: Tensor = vit.norm(x)
    return out


def forward_tokens(
    vit: VisionTransformer, x: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
) -> Tensor:
    """``forward_features`` for any input size, with optional masked patches: (B, P + N, D)."""
    return encode(vit, *embed_patches(vit, x, mask, mask_token))


def pooled(vit: VisionTransformer, tokens: Tensor) -> Tensor:
    """The backbone's own pooled feature (class token or mean, then ``fc_norm``): (B, D)."""
    out: Tensor = vit.forward_head(tokens, pre_logits=True)
    return out


def patch_tokens(vit: VisionTransformer, tokens: Tensor) -> Tensor:
    """The patch part (B, N, D) of ``tokens`` (B, P + N, D)."""
    return tokens[:, vit.num_prefix_tokens :]


def features(backbone: nn.Module, x: Tensor) -> Tensor:
    """Pooled features (B, F) of images of any size: ViTs resample their position embeddings
    when the input is not the configured size; other backbones (global pooling) run as is."""
    if (
        isinstance(backbone, VisionTransformer)
        and is_vit(backbone)
        and tuple(x.shape[-2:]) != tuple(backbone.patch_embed.img_size or ())
    ):
        return pooled(backbone, forward_tokens(backbone, x))
    out: Tensor = backbone(x)
    return out
