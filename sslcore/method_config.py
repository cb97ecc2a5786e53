"""Configuration of the self-supervised methods: one frozen model per method, selected by ``name``.

Defaults are the *small-data preset*: values that train stably on the embedded default (digits,
16 px, a few thousand images, the pipeline's AdamW defaults). Where they differ from the reference
implementation, the field's description gives the reference value; ``docs/methods.md`` has the
full table with sources.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

DEFAULT_METHOD = "simclr"

Momentum = Annotated[float, Field(ge=0.0, le=1.0)]
Ratio = Annotated[float, Field(ge=0.0, lt=1.0)]
Scale = tuple[float, float]


class StrictModel(BaseModel):
    """Base for every config section: immutable, unknown keys rejected."""

    # coerce_numbers_to_str: `--set mlflow.experiment=2024` parses 2024 as a YAML int
    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)


def _check_scale(scale: Scale, key: str) -> None:
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"{key} must satisfy 0 < min <= max <= 1, got {scale}")


class SimCLRConfig(StrictModel):
    """SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709."""

    name: Literal["simclr"] = "simclr"
    temperature: PositiveFloat = Field(0.2, description="NT-Xent temperature (reference: 0.1 to 0.5).")
    projection_hidden_dim: PositiveInt = Field(512, description="Reference: 2048 (the ResNet-50 width).")
    projection_dim: PositiveInt = 128
    gather_distributed: bool = Field(
        True, description="Use negatives from every DDP rank (global batch) instead of the local one."
    )
    num_local_crops: NonNegativeInt = Field(
        0,
        description="Multi-crop (SwAV, https://arxiv.org/abs/2006.09882): small extra views; every view of an "
        "image is a positive of every other. 0: the paper's two views.",
    )
    local_crop_size: PositiveInt = Field(16, description="Side of the local crops in pixels.")
    local_crop_scale: Scale = Field((0.05, 0.4), description="Area range of the local crops (SwAV: 0.05-0.14).")

    @model_validator(mode="after")
    def _scales(self) -> SimCLRConfig:
        _check_scale(self.local_crop_scale, "local_crop_scale")
        return self


class MoCoV2Config(StrictModel):
    """MoCo v2, Chen et al. 2020, https://arxiv.org/abs/2003.04297 (MoCo: https://arxiv.org/abs/1911.05722)."""

    name: Literal["moco_v2"] = "moco_v2"
    temperature: PositiveFloat = 0.2
    projection_hidden_dim: PositiveInt = Field(512, description="Reference: 2048.")
    projection_dim: PositiveInt = 128
    head_batch_norm: bool | None = Field(
        None,
        description="BatchNorm in the MLP head. None: on ViTs only, whose backbone has no BatchNorm (without it "
        "MoCo v2 does not learn on a small ViT, docs/methods.md); the ResNet reference has none.",
    )
    queue_size: PositiveInt = Field(
        1024, description="Keys in the FIFO queue; keep it below one epoch of keys (reference: 65536)."
    )
    momentum_start: Momentum = Field(0.99, description="Key-encoder EMA momentum (reference: 0.999).")
    momentum_end: Momentum = Field(0.99, description="Equal to momentum_start: constant, as the reference.")
    gather_distributed: bool = Field(
        True, description="Enqueue the keys of every DDP rank (reference), not only the local ones."
    )


class MoCoV3Config(StrictModel):
    """MoCo v3, Chen, Xie & He 2021, https://arxiv.org/abs/2104.02057."""

    name: Literal["moco_v3"] = "moco_v3"
    temperature: PositiveFloat = Field(0.2, description="Reference: 0.2 for ViTs, 1.0 for ResNets.")
    projection_hidden_dim: PositiveInt = 4096
    projection_dim: PositiveInt = 256
    predictor_hidden_dim: PositiveInt = 4096
    projection_layers: PositiveInt | None = Field(
        None, description="None: the reference's choice, 3 for ViTs and 2 for other backbones."
    )
    momentum_start: Momentum = 0.99
    momentum_end: Momentum = 1.0
    freeze_patch_embed: bool = Field(True, description="ViTs: keep the random patch projection (reference).")
    gather_distributed: bool = Field(True, description="Keys of every DDP rank are negatives (reference).")


class BYOLConfig(StrictModel):
    """BYOL, Grill et al. 2020, https://arxiv.org/abs/2006.07733."""

    name: Literal["byol"] = "byol"
    projection_hidden_dim: PositiveInt = 4096
    projection_dim: PositiveInt = 256
    predictor_hidden_dim: PositiveInt = 4096
    momentum_start: Momentum = Field(0.99, description="tau_base (reference: 0.996 at batch 4096).")
    momentum_end: Momentum = 1.0


class VICRegConfig(StrictModel):
    """VICReg, Bardes, Ponce & LeCun 2022, https://arxiv.org/abs/2105.04906."""

    name: Literal["vicreg"] = "vicreg"
    projection_hidden_dim: PositiveInt = Field(1024, description="Expander width (reference: 8192 on ResNet-50).")
    projection_dim: PositiveInt = Field(1024, description="Embedding dimension D (reference: 8192).")
    sim_weight: NonNegativeFloat = Field(25.0, description="Invariance coefficient lambda (reference: 25).")
    var_weight: NonNegativeFloat = Field(25.0, description="Variance coefficient mu (reference: 25).")
    cov_weight: NonNegativeFloat = Field(1.0, description="Covariance coefficient nu (reference: 1).")
    eps: PositiveFloat = Field(1e-4, description="Added to the variance before the square root (reference).")
    gather_distributed: bool = Field(
        True, description="Variance and covariance over every DDP rank's embeddings (reference), not the local batch."
    )

    @model_validator(mode="after")
    def _some_weight(self) -> VICRegConfig:
        if self.sim_weight + self.var_weight + self.cov_weight == 0:
            raise ValueError("at least one of sim_weight, var_weight, cov_weight must be > 0")
        return self


class BarlowTwinsConfig(StrictModel):
    """Barlow Twins, Zbontar et al. 2021, https://arxiv.org/abs/2103.03230."""

    name: Literal["barlow_twins"] = "barlow_twins"
    projection_hidden_dim: PositiveInt = Field(1024, description="Projector width (reference: 8192 on ResNet-50).")
    projection_dim: PositiveInt = Field(1024, description="Embedding dimension D (reference: 8192).")
    lambda_offdiag: NonNegativeFloat = Field(
        5e-3, description="Weight of the off-diagonal (redundancy) term (reference: 0.0051; paper: 5e-3)."
    )
    eps: PositiveFloat = Field(1e-5, description="Variance epsilon of the per-dimension standardisation (BatchNorm's).")
    gather_distributed: bool = Field(
        True, description="Cross-correlation over every DDP rank's embeddings (reference: SyncBN + all_reduce)."
    )


class _MultiCropConfig(StrictModel):
    """Multi-crop views shared by DINO and DINOv2 (https://arxiv.org/abs/2006.09882, sec. 3.2)."""

    num_local_crops: NonNegativeInt = Field(4, description="Reference: 8.")
    local_crop_size: PositiveInt = Field(8, description="Pixels (reference: 96 for 224-pixel global crops).")
    global_crop_scale: Scale = (0.4, 1.0)
    local_crop_scale: Scale = Field((0.2, 0.4), description="Reference: (0.05, 0.4).")

    @model_validator(mode="after")
    def _scales(self) -> _MultiCropConfig:
        _check_scale(self.global_crop_scale, "global_crop_scale")
        _check_scale(self.local_crop_scale, "local_crop_scale")
        return self


class DINOConfig(_MultiCropConfig):
    """DINO, Caron et al. 2021, https://arxiv.org/abs/2104.14294."""

    name: Literal["dino"] = "dino"
    output_dim: PositiveInt = Field(256, description="Prototypes K (reference: 65536).")
    hidden_dim: PositiveInt = Field(512, description="Reference: 2048.")
    bottleneck_dim: PositiveInt = 256
    head_layers: PositiveInt = 3
    head_batch_norm: bool = False
    norm_last_layer: bool = Field(True, description="Freeze the last layer's weight norm (reference, ViT-S).")
    student_temp: PositiveFloat = 0.1
    warmup_teacher_temp: PositiveFloat = Field(0.02, description="Reference: 0.04.")
    teacher_temp: PositiveFloat = Field(0.04, description="Reference: 0.04 (0.07 in the paper's best runs).")
    warmup_teacher_temp_epochs: NonNegativeFloat = Field(2.0, description="Reference: 0 (30 in the paper).")
    center_momentum: Momentum = 0.9
    momentum_start: Momentum = Field(0.99, description="Teacher EMA momentum (reference: 0.996).")
    momentum_end: Momentum = 1.0
    weight_decay_end: NonNegativeFloat | None = Field(
        None, description="Cosine weight decay from train.weight_decay to this (reference: 0.04 -> 0.4)."
    )
    freeze_last_layer_epochs: NonNegativeInt = 1
    clip_grad: PositiveFloat | None = Field(3.0, description="Per-parameter gradient-norm clip (reference).")
    koleo_loss_weight: NonNegativeFloat | None = Field(
        None,
        description="KoLeo regulariser on the student's pooled global features (DINOv2's; not in DINO). None: 0.1 "
        "on ViTs, whose student otherwise settles at the uniform output on small data (docs/methods.md), 0 on "
        "others.",
    )
    lr_scale: PositiveFloat | None = Field(
        None,
        description="Multiplies train.lr for this method. None: 0.25 on ViTs (the reference's 5e-4 per 256 "
        "images against train.lr's 2e-3), 1 on others.",
    )


class DINOv2Config(_MultiCropConfig):
    """DINOv2-style: DINO + iBOT + KoLeo on a ViT, Oquab et al. 2023, https://arxiv.org/abs/2304.07193
    (iBOT: https://arxiv.org/abs/2111.07832)."""

    name: Literal["dinov2"] = "dinov2"
    output_dim: PositiveInt = Field(1024, description="DINO prototypes (reference: 65536).")
    ibot_output_dim: PositiveInt = Field(1024, description="iBOT prototypes (reference: 65536).")
    separate_ibot_head: bool = Field(True, description="Untied DINO and iBOT heads (paper sec. 4).")
    hidden_dim: PositiveInt = Field(512, description="Reference: 2048.")
    bottleneck_dim: PositiveInt = 256
    head_layers: PositiveInt = 3
    norm_last_layer: bool = True
    student_temp: PositiveFloat = 0.1
    warmup_teacher_temp: PositiveFloat = Field(0.04, description="Reference: 0.04.")
    teacher_temp: PositiveFloat = Field(0.07, description="Reference: 0.07.")
    warmup_teacher_temp_epochs: NonNegativeFloat = Field(2.0, description="Reference: 30.")
    centering: Literal["sinkhorn_knopp", "center"] = Field(
        "sinkhorn_knopp", description="Teacher centering: DINOv2's Sinkhorn-Knopp, or DINO/iBOT's EMA center."
    )
    center_momentum: Momentum = 0.9
    mask_ratio_min: Ratio = 0.1
    mask_ratio_max: Ratio = 0.5
    mask_probability: float = Field(0.5, ge=0.0, le=1.0, description="Share of global crops that are masked.")
    min_block_patches: PositiveInt = Field(2, description="Smallest masked block (reference: 4 on 16x16 grids).")
    dino_loss_weight: NonNegativeFloat = 1.0
    ibot_loss_weight: NonNegativeFloat = 1.0
    koleo_loss_weight: NonNegativeFloat = 0.1
    momentum_start: Momentum = Field(0.99, description="Reference: 0.992.")
    momentum_end: Momentum = 1.0
    weight_decay_end: NonNegativeFloat | None = Field(None, description="Reference: 0.04 -> 0.2.")
    freeze_last_layer_epochs: NonNegativeInt = 1
    clip_grad: PositiveFloat | None = Field(3.0, description="Gradient-norm clip per module (reference).")

    @model_validator(mode="after")
    def _mask_range(self) -> DINOv2Config:
        if self.mask_ratio_min > self.mask_ratio_max:
            raise ValueError("mask_ratio_min must be <= mask_ratio_max")
        return self


class MAEConfig(StrictModel):
    """MAE, He et al. 2021, https://arxiv.org/abs/2111.06377."""

    name: Literal["mae"] = "mae"
    mask_ratio: Ratio = 0.75
    decoder_dim: PositiveInt = Field(128, description="Reference: 512.")
    decoder_depth: PositiveInt = Field(2, description="Reference: 8.")
    decoder_heads: PositiveInt = Field(4, description="Reference: 16.")
    norm_pix_loss: bool = Field(True, description="Per-patch normalised pixel targets (the paper's best setting).")
    crop_scale: Scale = Field((0.2, 1.0), description="MAE's only augmentation besides flips (reference).")

    @model_validator(mode="after")
    def _scale(self) -> MAEConfig:
        _check_scale(self.crop_scale, "crop_scale")
        return self


class BEiTConfig(StrictModel):
    """BEiT-style masked prediction with EMA-teacher targets (BEiT, https://arxiv.org/abs/2106.08254;
    targets as in data2vec, https://arxiv.org/abs/2202.03555). See docs/methods.md for why."""

    name: Literal["beit"] = "beit"
    mask_ratio: Ratio = Field(0.4, description="BEiT: 75 of 196 patches.")
    min_block_patches: PositiveInt = Field(2, description="Smallest masked block (reference: 16 on 14x14 grids).")
    min_aspect: PositiveFloat = Field(0.3, le=1.0)
    target_layers: PositiveInt = Field(6, description="Average the teacher's top-K blocks (data2vec: 6 of 12).")
    loss_beta: NonNegativeFloat = Field(2.0, description="Smooth-L1 beta; 0 means squared error.")
    momentum_start: Momentum = Field(0.99, description="Reference (data2vec): 0.999.")
    momentum_end: Momentum = Field(0.999, description="Reference (data2vec): 0.9999.")
    clip_grad: PositiveFloat | None = Field(3.0, description="Total gradient-norm clip (BEiT reference).")
    crop_scale: Scale = Field((0.2, 1.0), description="Reference: (0.08, 1.0).")

    @model_validator(mode="after")
    def _scale(self) -> BEiTConfig:
        _check_scale(self.crop_scale, "crop_scale")
        return self


def _default_method_name(value: Any) -> Any:
    """A method section without ``name`` is the default method's (``method.temperature=0.3``)."""
    if isinstance(value, dict) and "name" not in value:
        return {"name": DEFAULT_METHOD, **value}
    return value


MethodConfig = Annotated[
    SimCLRConfig
    | MoCoV2Config
    | MoCoV3Config
    | BYOLConfig
    | VICRegConfig
    | BarlowTwinsConfig
    | DINOConfig
    | DINOv2Config
    | MAEConfig
    | BEiTConfig,
    Field(discriminator="name"),
    BeforeValidator(_default_method_name),
]
"""Any method's config; ``name`` picks the class."""
