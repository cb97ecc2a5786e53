"""sslcore.losses.mae: patchify and the masked-patches-only MSE."""

from __future__ import annotations

import pytest
import torch

from sslcore.losses import mae_loss, patchify


def test_patchify_is_row_major_patches_of_channels_last_pixels() -> None:
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    p = patchify(x, 2)
    assert p.shape == (2, 6, 12)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                expected = x[b, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].permute(1, 2, 0).reshape(-1)
                torch.testing.assert_close(p[b, i * 3 + j], expected)


def test_patchify_matches_timm_patch_order() -> None:
    """The k-th patch of patchify is the k-th token of a timm patch embedding with identity weights."""
    import timm

    vit = timm.create_model("test_vit", num_classes=0, img_size=8, patch_size=4)
    proj = vit.patch_embed.proj
    with torch.no_grad():
        proj.weight.zero_()
        proj.bias.zero_()
        proj.weight[0, 1, 2, 3] = 1.0  # token channel 0 = pixel (channel 1, row 2, col 3) of each patch
    x = torch.randn(1, 3, 8, 8)
    tokens = proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens[0, :, 0], patchify(x, 4)[0].view(4, 4, 4, 3)[:, 2, 3, 1])


def _naive(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> float:
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1]):
            if not mask[b, n]:
                continue
            t = target[b, n]
            if norm_pix:
                t = (t - t.mean()) / (t.var() + 1e-6).sqrt()
            total += float(((pred[b, n] - t) ** 2).mean())
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [False, True])
def test_matches_naive_and_ignores_visible_patches(norm_pix: bool) -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 8, 12, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 8, generator=g) < 0.75
    loss = mae_loss(pred, target, mask, norm_pix=norm_pix)
    assert loss.item() == pytest.approx(_naive(pred, target, mask, norm_pix), rel=1e-9)
    changed = pred.clone()
    changed[~mask] = 1e3  # anything at visible positions
    torch.testing.assert_close(mae_loss(changed, target, mask, norm_pix=norm_pix), loss)


def test_perfect_reconstruction_is_zero() -> None:
    target = torch.randn(2, 4, 6)
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert mae_loss(target, target, mask, norm_pix=False).item() == 0.0
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    assert mae_loss(normed, target, mask, norm_pix=True).item() == pytest.approx(0.0, abs=1e-10)
