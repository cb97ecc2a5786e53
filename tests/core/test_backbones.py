"""sslcore.backbones: timm models, the small-image ResNet stem, and ViTs sized for small inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslcore.backbones import create_backbone, feature_dim, output_dim
from sslcore.config import ModelConfig


def _stem_output_side(model: nn.Module, x: torch.Tensor) -> int:
    """Spatial side after conv1 (the whole stem for deep stems) and the max-pool."""
    seen: list[int] = []
    handle = model.maxpool.register_forward_hook(lambda _m, _i, out: seen.append(out.shape[-1]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("size", [16, 32])
def test_resnet18_small_stem_keeps_resolution(size: int) -> None:
    model = create_backbone(ModelConfig(backbone="resnet18", small_image_stem=True)).eval()
    assert isinstance(model.conv1, nn.Conv2d)
    assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 512)
        assert _stem_output_side(model, x) == size  # the stock stem would give size / 4
        assert model.forward_features(x).shape[-2:] == (size // 8, size // 8)
    assert feature_dim(model) == 512


def test_resnet18_without_small_stem_is_stock() -> None:
    model = create_backbone(ModelConfig(backbone="resnet18", small_image_stem=False)).eval()
    assert (model.conv1.kernel_size, model.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(model.maxpool, nn.MaxPool2d)
    with torch.no_grad():
        assert _stem_output_side(model, torch.randn(1, 3, 32, 32)) == 8


def test_deep_stem_resnet_with_small_stem() -> None:
    model = create_backbone(ModelConfig(backbone="resnet10t", small_image_stem=True)).eval()
    assert isinstance(model.conv1, nn.Sequential)
    convs = [m for m in model.conv1.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.stride == (1, 1) for c in convs)
    assert isinstance(model.maxpool, nn.Identity)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert model(x).shape == (2, feature_dim(model))
        assert _stem_output_side(model, x) == 16


@pytest.mark.parametrize("backbone", ["resnet18", "resnet10t"])
def test_stem_without_pool_keeps_the_stock_stem_at_half_its_stride(backbone: str) -> None:
    stock = create_backbone(ModelConfig(backbone=backbone, small_image_stem=False)).eval()
    model = create_backbone(ModelConfig(backbone=backbone, small_image_stem=False, stem_pool=False)).eval()
    assert isinstance(model.maxpool, nn.Identity)
    # the stem itself is untouched: same layers, same weights shapes, so stock weights load
    assert model.state_dict().keys() == stock.state_dict().keys()
    model.load_state_dict(stock.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _stem_output_side(model, x) == 16  # stock: 8
        assert model.forward_features(x).shape[-2:] == (2, 2)  # stock: 1x1
        assert stock.forward_features(x).shape[-2:] == (1, 1)
        assert model(x).shape == (2, feature_dim(model))


def test_stem_without_pool_on_models_without_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="stem_pool"):
        create_backbone(ModelConfig(backbone="mobilenetv3_small_050", small_image_stem=False, stem_pool=False))
    with pytest.raises(ValueError, match="stem_pool"):
        create_backbone(ModelConfig(backbone="vit_tiny_patch16_224", image_size=32, stem_pool=False))


def test_vit_gets_image_and_patch_size() -> None:
    cfg = ModelConfig(backbone="vit_tiny_patch16_224", image_size=32, patch_size=4)
    model = create_backbone(cfg).eval()
    assert tuple(model.patch_embed.patch_size) == (4, 4)
    assert model.patch_embed.num_patches == 64
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 192)
    assert feature_dim(model) == 192


def test_small_stem_on_other_families_is_an_error() -> None:
    with pytest.raises(ValueError, match="small_image_stem"):
        create_backbone(ModelConfig(backbone="mobilenetv3_small_050", small_image_stem=True))
    model = create_backbone(ModelConfig(backbone="mobilenetv3_small_050", small_image_stem=False)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1024)


@pytest.mark.parametrize(
    ("backbone", "extra"),
    [
        ("resnet18", {}),
        ("vit_tiny_patch16_224", {"image_size": 16, "patch_size": 4}),
        ("mobilenetv3_small_050", {"small_image_stem": False}),
    ],
)
def test_feature_dim_is_the_output_width(backbone: str, extra: dict[str, object]) -> None:
    cfg = ModelConfig.model_validate({"backbone": backbone, **extra})
    model = create_backbone(cfg).eval()
    with torch.no_grad():
        width = model(torch.randn(1, 3, cfg.image_size, cfg.image_size)).shape[-1]
    assert feature_dim(model) == width


def test_single_channel_input() -> None:
    model = create_backbone(ModelConfig(backbone="test_resnet"), in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, feature_dim(model))


@pytest.mark.parametrize("training", [True, False])
def test_output_dim_measures_and_restores_mode(training: bool) -> None:
    model = create_backbone(ModelConfig(backbone="test_resnet"))
    model.train(training)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    assert output_dim(model, 16) == feature_dim(model)
    assert model.training is training
    torch.testing.assert_close(bn.running_mean, before)  # measured in eval mode


def test_widths_set_the_stage_channels_of_a_resnet() -> None:
    model = create_backbone(ModelConfig(backbone="resnet10t", small_image_stem=False, widths=(16, 32, 48, 64)))
    assert feature_dim(model) == 64
    assert [model.get_submodule(f"layer{i}")[0].conv1.out_channels for i in range(1, 5)] == [16, 32, 48, 64]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_widths_on_a_model_without_stages_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"model\.widths is for timm ResNets"):
        create_backbone(ModelConfig(backbone="vit_tiny_patch16_224", image_size=32, widths=(16, 32, 48, 64)))
