"""sslcore.methods.base.TwoViewMethod, through the methods built on it (VICReg, Barlow Twins): two views of
one recipe, gradients into backbone and head, a clear error for the wrong number of views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sslcore.config import PipelineConfig, load_config
from sslcore.methods import METHODS, build_method
from sslcore.methods.base import TwoViewMethod

TWO_VIEW = {"vicreg": "VICReg", "barlow_twins": "BarlowTwins"}


def _cfg(method: str) -> PipelineConfig:
    return load_config(
        None,
        [
            "model.backbone=test_resnet",
            f"method.name={method}",
            "method.projection_hidden_dim=32",
            "method.projection_dim=16",
        ],
    )


def _views(n: int, batch: int = 4, size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, 3, size, size, generator=g) for _ in range(n)]


def test_the_two_view_methods_are_the_registered_subclasses() -> None:
    assert {n for n in METHODS.names() if issubclass(METHODS.get(n), TwoViewMethod)} == set(TWO_VIEW)


@pytest.mark.parametrize("method", sorted(TWO_VIEW))
def test_backward_reaches_backbone_and_head(method: str) -> None:
    torch.manual_seed(0)
    model = build_method(_cfg(method))
    model(_views(2))["loss"].backward()
    for part in (model.backbone, model.projection_head):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads if g is not None)


@pytest.mark.parametrize("n_views", [1, 3])
@pytest.mark.parametrize("method", sorted(TWO_VIEW))
def test_wrong_number_of_views(method: str, n_views: int) -> None:
    model = build_method(_cfg(method))
    with pytest.raises(ValueError, match=f"{TWO_VIEW[method]} takes 2 views, got {n_views}"):
        model(_views(n_views))


@pytest.mark.parametrize("method", sorted(TWO_VIEW))
def test_view_transform_makes_two_views(method: str) -> None:
    cfg = _cfg(method)
    model = build_method(cfg)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    views = model.view_transform(cfg.augment, 16)(image)
    assert len(views) == 2 and all(v.shape == (3, 16, 16) for v in views)
