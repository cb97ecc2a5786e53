"""The ``model`` and ``augment`` sections: the timm backbone and the per-view augmentations."""

from __future__ import annotations

import difflib

from pydantic import Field, PositiveInt, field_validator

from sslcore.config.base import StrictModel

__all__ = ["AugmentConfig", "ModelConfig"]


class ModelConfig(StrictModel):
    backbone: str = Field(
        "resnet10t",
        description="Any timm model name (timm.list_models()). Default: timm's 4.9 M-parameter ResNet-10-T, which "
        "beats raw pixels on the embedded digits at a quarter of ResNet-18's compute (docs/evaluation.md).",
    )
    small_image_stem: bool = Field(False, description="ResNets: 3x3 stride-1 stem, no max-pool. For 28-64 px inputs.")
    stem_pool: bool = Field(
        True,
        description="ResNets with their stock stem: keep its max-pool. False halves the stem's stride (4 to 2): "
        "twice the resolution in every stage at about four times their compute. The small-image stem has no pool.",
    )
    image_size: PositiveInt = Field(32, description="Input side length after resizing.")
    patch_size: PositiveInt | None = Field(None, description="ViTs: patch size override.")
    widths: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt] | None = Field(
        None,
        description="ResNets: channels of the four stages (timm's `channels`, stock 64/128/256/512); "
        "half widths cost about a quarter of the compute. Default: the architecture's own.",
    )

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        import timm

        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown timm model '{name}'{hint}")
        return name


class AugmentConfig(StrictModel):
    """Per-view augmentations (SimCLR-style), sized for small images by default."""

    crop_scale: tuple[float, float] = Field(
        (0.8, 1.0),
        description="Area range of the random crop. The default suits small centred images such as the embedded "
        "digits; photos and Fashion-MNIST want smaller crops (0.08-0.2 to 1.0).",
    )
    hflip_p: float = Field(0.0, ge=0.0, le=1.0)
    color_jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    brightness: float = Field(0.4, ge=0.0)
    contrast: float = Field(0.4, ge=0.0)
    saturation: float = Field(0.4, ge=0.0)
    hue: float = Field(0.1, ge=0.0, le=0.5)
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    blur_p: float = Field(0.0, ge=0.0, le=1.0)
    on_device: bool = Field(
        True,
        description="Run the per-sample augmentations batched on the training device (a GPU, or the training "
        "process's CPU threads); loader processes then only decode and resize. false: per-image PIL/torchvision "
        "views in the loader processes.",
    )
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError("crop_scale must satisfy 0 < min <= max <= 1")
        return v
