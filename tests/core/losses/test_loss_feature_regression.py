"""sslcore.losses.feature_regression: data2vec-style targets and the masked smooth-L1 regression."""

from __future__ import annotations

import pytest
import torch

from sslcore.losses import feature_regression_loss, layer_average_targets


def _naive_instance_norm(t: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(t)
    for b in range(t.shape[0]):
        for d in range(t.shape[2]):
            col = t[b, :, d]
            out[b, :, d] = (col - col.mean()) / (col.var(unbiased=False) + 1e-5).sqrt()
    return out


def test_targets_average_instance_normalised_layers() -> None:
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2, 5, 3, generator=g, dtype=torch.float64) * (i + 1) + i for i in range(3)]
    expected = sum(_naive_instance_norm(t) for t in layers) / 3
    torch.testing.assert_close(layer_average_targets(layers), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
def test_regression_matches_naive(beta: float) -> None:
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 7, 4, generator=g, dtype=torch.float64)
    total = 0.0
    for p, t in zip(pred, target, strict=True):
        for d in (p - t).abs().tolist():
            total += d * d if beta == 0 else (0.5 * d * d / beta if d < beta else d - 0.5 * beta)
    got = feature_regression_loss(pred, target, beta=beta).item()
    assert got == pytest.approx(total / 7, rel=1e-6)


def test_no_masked_patches_gives_a_zero_with_a_graph_and_no_target_gradient() -> None:
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = feature_regression_loss(pred, torch.zeros(0, 4), beta=2.0)
    assert loss.item() == 0.0 and loss.requires_grad
    p = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    feature_regression_loss(p, t, beta=2.0).backward()
    assert p.grad is not None and t.grad is None
