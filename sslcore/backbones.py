"""Backbones come from timm only: ``timm.create_model(name, num_classes=0)``.

The small-image stem option follows the usual CIFAR adaptation (SimCLR appendix B.9, solo-learn):
a ResNet's 7x7 stride-2 stem and max-pool are replaced by a 3x3 stride-1 convolution, which keeps
spatial resolution for 28-64 px inputs. ``stem_pool=False`` keeps the stock stem and drops only its
max-pool: a middle way between the stock stem (stride 4) and the small-image one (stride 1) for inputs
of about 32 px. ViTs instead get ``img_size`` and an optional ``patch_size``.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from sslcore.config import ModelConfig


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed")


def _adapt_resnet_stem(model: nn.Module) -> None:
    conv1 = model.conv1
    if isinstance(conv1, nn.Conv2d):
        model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, 1, 1, bias=False)
    elif isinstance(conv1, nn.Sequential):  # deep stems (resnet*d, *t): first conv to stride 1
        first = next(m for m in conv1.modules() if isinstance(m, nn.Conv2d))
        first.stride = (1, 1)
    else:  # pragma: no cover - timm ResNets only have these two stems
        raise ValueError(f"unsupported ResNet stem {type(conv1).__name__}")
    model.maxpool = nn.Identity()


def timm_kwargs(cfg: ModelConfig, vit: bool = False) -> dict[str, object]:
    """The keyword arguments besides the name that ``timm.create_model`` gets for ``cfg``: a ResNet's stage
    widths, or a ViT's input size and patch size."""
    kwargs: dict[str, object] = {}
    if vit:
        kwargs["img_size"] = cfg.image_size
        if cfg.patch_size is not None:
            kwargs["patch_size"] = cfg.patch_size
    elif cfg.widths is not None:
        kwargs["channels"] = tuple(cfg.widths)
    return kwargs


def stock_timm(cfg: ModelConfig) -> bool:
    """Whether ``timm.create_model(cfg.backbone, num_classes=0, **timm_kwargs(...))`` alone builds the backbone:
    false where :func:`create_backbone` changes a ResNet's stem afterwards (``small_image_stem``,
    ``stem_pool=False``), which no timm argument expresses (and, to be safe, a ViT with ``small_image_stem``,
    which it ignores)."""
    return cfg.stem_pool and not cfg.small_image_stem


def plain_timm_kwargs(cfg: ModelConfig, model: nn.Module) -> dict[str, object] | None:
    """The :func:`timm_kwargs` with which plain timm rebuilds ``model`` (from ``create_backbone(cfg)``), or
    None where timm alone cannot (:func:`stock_timm`)."""
    return timm_kwargs(cfg, vit=_is_vit(model)) if stock_timm(cfg) else None


def create_backbone(cfg: ModelConfig, in_chans: int = 3) -> nn.Module:
    """Build an untrained feature extractor that maps ``(B, C, S, S)`` to ``(B, num_features)``."""
    try:
        probe = timm.create_model(cfg.backbone, pretrained=False, num_classes=0, in_chans=in_chans, **timm_kwargs(cfg))
    except TypeError as e:
        if cfg.widths is None:
            raise
        raise ValueError(f"model.widths is for timm ResNets; '{cfg.backbone}' takes no stage widths ({e})") from e
    if _is_vit(probe):
        if not cfg.stem_pool:
            raise ValueError(f"model.stem_pool=false is for ResNets, not the ViT '{cfg.backbone}'")
        kwargs = timm_kwargs(cfg, vit=True)
        model = timm.create_model(cfg.backbone, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    else:
        model = probe
        if cfg.small_image_stem:
            if not (hasattr(model, "conv1") and hasattr(model, "maxpool")):
                raise ValueError(
                    f"model.small_image_stem is only supported for ResNet-family backbones and ViTs, "
                    f"not '{cfg.backbone}': set model.small_image_stem=false"
                )
            _adapt_resnet_stem(model)
        elif not cfg.stem_pool:
            if not isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
                raise ValueError(
                    f"model.stem_pool=false needs a ResNet-family backbone with a max-pool after its stem, "
                    f"not '{cfg.backbone}': set model.stem_pool=true"
                )
            model.maxpool = nn.Identity()
    return model


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled features (timm's ``num_features``)."""
    # head_hidden_size: models whose pooled output passes a conv head (MobileNetV3/V4, GhostNet, ...)
    dim = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if not isinstance(dim, int):  # pragma: no cover - every timm model sets it
        raise ValueError("backbone has no integer num_features")
    return dim


@torch.no_grad()
def output_dim(model: nn.Module, image_size: int, in_chans: int = 3) -> int:
    """Measure the feature width with a dummy forward (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    out = model(torch.zeros(1, in_chans, image_size, image_size))
    model.train(was_training)
    return int(out.shape[-1])
