"""sslcore.methods.simclr: backbone + head wiring, one joint pass, NT-Xent on row-aligned pairs.

Every registered method x backbone takes a training step in ``methods/test_every_method.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sslcore.backbones import feature_dim
from sslcore.config import ConfigError, PipelineConfig, load_config
from sslcore.losses import ntxent
from sslcore.losses.ntxent import multi_positive_ntxent
from sslcore.methods import SimCLR, build_method

SMALL_HEAD = ["method.projection_hidden_dim=32", "method.projection_dim=16"]


def _cfg(*overrides: str) -> PipelineConfig:
    return load_config(None, ["model.backbone=test_resnet", *SMALL_HEAD, *overrides])


def _views(n: int, batch: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, size, size, generator=g) for _ in range(n)]


def test_build_method_wires_backbone_and_head() -> None:
    cfg = _cfg("method.temperature=0.3")
    model = build_method(cfg)
    assert isinstance(model, SimCLR)
    assert model.cfg == cfg.method
    first = model.projection_head.layers[0]
    last = model.projection_head.layers[-1]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    assert (first.in_features, first.out_features) == (feature_dim(model.backbone), 32)
    assert last.out_features == 16


def test_forward_returns_loss_and_embedding_std() -> None:
    torch.manual_seed(0)
    model = build_method(_cfg())
    out = model(_views(2, 4, 16))
    assert set(out) == {"loss", "embedding_std"}
    assert out["loss"].shape == () and torch.isfinite(out["loss"])
    assert out["loss"].requires_grad
    assert out["embedding_std"].shape == () and not out["embedding_std"].requires_grad
    assert 0.0 < out["embedding_std"].item() <= 1.0


@pytest.mark.parametrize("training", [True, False])
def test_loss_is_ntxent_of_one_joint_pass(training: bool) -> None:
    """Both views go through the backbone together (joint BN statistics in training) and row i of
    view 0 is paired with row i of view 1."""
    torch.manual_seed(0)
    model = build_method(_cfg("method.temperature=0.3")).train(training)
    views = _views(2, 5, 16)
    with torch.no_grad():
        z0, z1 = model.projection_head(model.backbone(torch.cat(views))).chunk(2)
        expected = ntxent(z0, z1, temperature=0.3)
        torch.testing.assert_close(model(views)["loss"], expected)


def test_backward_reaches_backbone_and_head() -> None:
    torch.manual_seed(0)
    model = build_method(_cfg())
    model(_views(2, 4, 16))["loss"].backward()
    for part in (model.backbone, model.projection_head):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads if g is not None)


@pytest.mark.parametrize("n_views", [1, 3])
def test_wrong_number_of_views(n_views: int) -> None:
    model = build_method(_cfg())
    with pytest.raises(ValueError, match=f"SimCLR takes 2 views, got {n_views}"):
        model(_views(n_views, 4, 16))


def test_view_transform_makes_two_views() -> None:
    cfg = _cfg()
    model = build_method(cfg)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    views = model.view_transform(cfg.augment, 16)(image)
    assert len(views) == 2 and all(v.shape == (3, 16, 16) for v in views)


def test_multi_crop_views_and_loss() -> None:
    """``num_local_crops`` adds small views after the two global ones; the loss treats every view of an
    image as a positive of every other (the multi-positive NT-Xent), over one pass per view size."""
    cfg = _cfg("method.num_local_crops=3", "method.local_crop_size=8")
    model = build_method(cfg)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    views = model.view_transform(cfg.augment, 16)(image)
    assert [tuple(v.shape) for v in views] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 3
    batch = _views(2, 4, 16) + _views(3, 4, 8, seed=1)
    model.eval()  # BatchNorm in eval mode: the same features whatever else is in the pass
    with torch.no_grad():
        out = model(batch)
        z = [model.projection_head(model.backbone(v)) for v in batch]
    assert out["loss"].item() == pytest.approx(
        multi_positive_ntxent(z, temperature=cfg.method.temperature).item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="SimCLR takes 5 views, got 2"):
        model(batch[:2])


def test_local_crop_scale_is_validated() -> None:
    with pytest.raises(ConfigError, match="local_crop_scale"):
        _cfg("method.local_crop_scale=[0.5, 0.2]")
