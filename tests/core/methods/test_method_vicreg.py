"""sslcore.methods.vicreg: backbone + expander wiring, one joint pass, the VICReg loss on row-aligned
pairs, its terms as detached scalars.

Every registered method x backbone takes a training step in ``methods/test_every_method.py``; the two-view
plumbing VICReg and Barlow Twins share (views, backward, view count) is tested in ``test_method_two_view.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslcore.backbones import feature_dim
from sslcore.config import PipelineConfig, load_config
from sslcore.losses import vicreg_loss
from sslcore.method_config import VICRegConfig
from sslcore.methods import VICReg, build_method

SMALL_HEAD = ["method.name=vicreg", "method.projection_hidden_dim=32", "method.projection_dim=16"]


def _cfg(*overrides: str) -> PipelineConfig:
    return load_config(None, ["model.backbone=test_resnet", *SMALL_HEAD, *overrides])


def _views(n: int, batch: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, size, size, generator=g) for _ in range(n)]


def test_config_defaults_and_validation() -> None:
    cfg = VICRegConfig()
    assert (cfg.sim_weight, cfg.var_weight, cfg.cov_weight, cfg.eps) == (25.0, 25.0, 1.0, 1e-4)
    assert (cfg.projection_hidden_dim, cfg.projection_dim, cfg.gather_distributed) == (1024, 1024, True)
    with pytest.raises(ValueError, match="at least one of"):
        VICRegConfig(sim_weight=0, var_weight=0, cov_weight=0)
    with pytest.raises(ValueError):
        VICRegConfig(var_weight=-1.0)
    with pytest.raises(ValueError):
        VICRegConfig(eps=0.0)


def test_build_method_wires_backbone_and_expander() -> None:
    cfg = _cfg("method.sim_weight=10")
    model = build_method(cfg)
    assert isinstance(model, VICReg)
    assert model.cfg == cfg.method and cfg.method.sim_weight == 10.0
    linears = [m for m in model.projection_head.layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(feature_dim(model.backbone), 32), (32, 32), (32, 16)]


def test_forward_returns_loss_embedding_std_and_the_terms() -> None:
    torch.manual_seed(0)
    model = build_method(_cfg())
    out = model(_views(2, 4, 16))
    assert set(out) == {"loss", "embedding_std", "invariance", "variance", "covariance"}
    assert out["loss"].shape == () and torch.isfinite(out["loss"]) and out["loss"].requires_grad
    for key in ("embedding_std", "invariance", "variance", "covariance"):
        assert out[key].shape == () and not out[key].requires_grad and torch.isfinite(out[key])
    assert 0.0 < out["embedding_std"].item() <= 1.0
    torch.testing.assert_close(out["loss"].detach(), 25 * out["invariance"] + 25 * out["variance"] + out["covariance"])


@pytest.mark.parametrize("training", [True, False])
def test_loss_is_vicreg_of_one_joint_pass(training: bool) -> None:
    """Both views go through the backbone and expander together, row i of view 0 paired with row i
    of view 1, with the configured coefficients."""
    torch.manual_seed(0)
    model = build_method(_cfg("method.sim_weight=3", "method.var_weight=2", "method.cov_weight=0.5")).train(training)
    views = _views(2, 5, 16)
    with torch.no_grad():
        z0, z1 = model.projection_head(model.backbone(torch.cat(views))).chunk(2)
        expected = vicreg_loss(z0, z1, sim_weight=3, var_weight=2, cov_weight=0.5, eps=1e-4)
        out = model(views)
    torch.testing.assert_close(out["loss"], expected.loss)
    torch.testing.assert_close(out["variance"], expected.variance)
