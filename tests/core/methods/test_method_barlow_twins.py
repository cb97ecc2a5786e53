"""sslcore.methods.barlow_twins: backbone + projector wiring, one joint pass, the Barlow Twins loss on
row-aligned pairs, its two sums as detached scalars.

Every registered method x backbone takes a training step in ``methods/test_every_method.py``; the two-view
plumbing VICReg and Barlow Twins share (views, backward, view count) is tested in ``test_method_two_view.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslcore.backbones import feature_dim
from sslcore.config import PipelineConfig, load_config
from sslcore.losses import barlow_twins_loss
from sslcore.method_config import BarlowTwinsConfig
from sslcore.methods import BarlowTwins, build_method

SMALL_HEAD = ["method.name=barlow_twins", "method.projection_hidden_dim=32", "method.projection_dim=16"]


def _cfg(*overrides: str) -> PipelineConfig:
    return load_config(None, ["model.backbone=test_resnet", *SMALL_HEAD, *overrides])


def _views(n: int, batch: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, size, size, generator=g) for _ in range(n)]


def test_config_defaults_and_validation() -> None:
    cfg = BarlowTwinsConfig()
    assert (cfg.lambda_offdiag, cfg.eps) == (5e-3, 1e-5)
    assert (cfg.projection_hidden_dim, cfg.projection_dim, cfg.gather_distributed) == (1024, 1024, True)
    with pytest.raises(ValueError):
        BarlowTwinsConfig(lambda_offdiag=-1e-3)
    with pytest.raises(ValueError):
        BarlowTwinsConfig(eps=0.0)


def test_build_method_wires_backbone_and_projector() -> None:
    cfg = _cfg("method.lambda_offdiag=0.0051")
    model = build_method(cfg)
    assert isinstance(model, BarlowTwins)
    assert model.cfg == cfg.method and cfg.method.lambda_offdiag == 0.0051
    linears = [m for m in model.projection_head.layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(feature_dim(model.backbone), 32), (32, 32), (32, 16)]


def test_forward_returns_loss_embedding_std_and_the_sums() -> None:
    torch.manual_seed(0)
    model = build_method(_cfg())
    out = model(_views(2, 4, 16))
    assert set(out) == {"loss", "embedding_std", "on_diag", "off_diag"}
    assert out["loss"].shape == () and torch.isfinite(out["loss"]) and out["loss"].requires_grad
    for key in ("embedding_std", "on_diag", "off_diag"):
        assert out[key].shape == () and not out[key].requires_grad and torch.isfinite(out[key])
    assert 0.0 < out["embedding_std"].item() <= 1.0
    torch.testing.assert_close(out["loss"].detach(), out["on_diag"] + 5e-3 * out["off_diag"])


@pytest.mark.parametrize("training", [True, False])
def test_loss_is_barlow_twins_of_one_joint_pass(training: bool) -> None:
    torch.manual_seed(0)
    model = build_method(_cfg("method.lambda_offdiag=0.1", "method.eps=1e-3")).train(training)
    views = _views(2, 5, 16)
    with torch.no_grad():
        z0, z1 = model.projection_head(model.backbone(torch.cat(views))).chunk(2)
        expected = barlow_twins_loss(z0, z1, lambda_offdiag=0.1, eps=1e-3)
        out = model(views)
    torch.testing.assert_close(out["loss"], expected.loss)
    torch.testing.assert_close(out["off_diag"], expected.off_diag)
