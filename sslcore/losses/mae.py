"""MAE's pixel reconstruction loss (He et al. 2021, https://arxiv.org/abs/2111.06377, sec. 3
"Reconstruction target"; ``forward_loss`` in ``models_mae.py``)."""

from __future__ import annotations

from torch import Tensor

from sslcore.losses.precision import at_least_fp32


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) in timm's row-major patch order (MAE's ``patchify``)."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not a multiple of patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def mae_loss(prediction: Tensor, target: Tensor, mask: Tensor, *, norm_pix: bool) -> Tensor:
    """Mean squared error over the masked patches only.

    Args:
        prediction: (B, N, P) reconstructed patches.
        target: (B, N, P) original patches (from :func:`patchify`).
        mask: (B, N) booleans, ``True`` = masked (these count); visible patches are ignored.
        norm_pix: Normalise each target patch by its own mean and variance first (the paper's
            best setting).

    Returns:
        Scalar: per-patch MSE averaged over masked patches.
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (at_least_fp32(prediction) - at_least_fp32(target)).pow(2).mean(dim=-1)  # (B, N)
    weights = mask.to(per_patch.dtype)
    return (per_patch * weights).sum() / weights.sum().clamp(min=1.0)
