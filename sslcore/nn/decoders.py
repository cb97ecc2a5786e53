"""MAE's light decoder (He et al. 2021, https://arxiv.org/abs/2111.06377, sec. 3 "MAE decoder" and
``forward_decoder`` in ``models_mae.py``), built from timm's transformer ``Block``."""

from __future__ import annotations

import torch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn


class MAEDecoder(nn.Module):
    """Visible-token encodings plus mask tokens -> pixels of every patch.

    Attributes:
        embed: Linear from the encoder width to the decoder width.
        mask_token: (1, 1, decoder_dim) learnable stand-in for every masked patch.
        pos_embed: (1, N, decoder_dim) fixed 2-D sine-cosine position embeddings (not trained).
        blocks: ``depth`` timm transformer blocks.
        norm: Final LayerNorm.
        pred: Linear onto ``patch_dim`` pixel values per patch.
    """

    pos_embed: Tensor

    def __init__(
        self, grid: tuple[int, int], encoder_dim: int, decoder_dim: int, depth: int, num_heads: int, patch_dim: int
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        pos = build_sincos2d_pos_embed(list(grid), decoder_dim)  # (N, decoder_dim)
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)
        self.blocks = nn.Sequential(
            *[Block(decoder_dim, num_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(decoder_dim)
        self.pred = nn.Linear(decoder_dim, patch_dim)
        for m in [self.embed, self.pred, *self.blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, tokens: Tensor, ids_keep: Tensor, num_patches: int, num_prefix: int) -> Tensor:
        """Reconstruct all patches.

        Args:
            tokens: (B, P + N_keep, D_enc) encoder output: prefix tokens, then the visible patches.
            ids_keep: (B, N_keep) patch index of each visible token.
            num_patches: N, patches per image.
            num_prefix: P, class/register tokens at the front of ``tokens``.

        Returns:
            (B, N, patch_dim) predicted pixels for every patch (the loss keeps the masked ones).
        """
        x = self.embed(tokens)
        prefix, visible = x[:, :num_prefix], x[:, num_prefix:]
        b, _, d = visible.shape
        full = self.mask_token.to(x.dtype).expand(b, num_patches, d).clone()
        full.scatter_(1, ids_keep.unsqueeze(-1).expand(-1, -1, d), visible)
        full = full + self.pos_embed.to(x.dtype)
        # Prefix tokens have no decoder position (MAE: a zero position for the class token).
        x = self.norm(self.blocks(torch.cat([prefix, full], dim=1)))
        out: Tensor = self.pred(x[:, num_prefix:])
        return out
