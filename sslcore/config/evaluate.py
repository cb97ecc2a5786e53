"""The ``eval`` section: transfer protocols, baselines and extra labelled datasets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from sslcore.config.base import StrictModel
from sslcore.config.ingest import Source

__all__ = ["EvalConfig", "EvalDataset", "KnnSetting"]


class KnnSetting(StrictModel):
    k: PositiveInt
    temperature: PositiveFloat


class EvalDataset(StrictModel):
    """A labelled downstream dataset beside the pretraining data: either shards with a manifest (as
    ``sslpipe ingest`` writes them) or an image source that the ingest stage turns into shards."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Prefix of its metric names.")
    path: str | None = Field(None, description="Shard folder (local or s3://) holding manifest.json.")
    source: Source | None = Field(
        None,
        description="A labelled source (folder with labels=subfolder or labels=file, fashion_mnist IDX files, "
        "webdataset shards with cls): the ingest stage writes it to <shard_dir>-eval/<name>.",
    )

    @model_validator(mode="after")
    def _one_location(self) -> EvalDataset:
        if (self.path is None) == (self.source is None):
            raise ValueError(f"eval dataset '{self.name}': set exactly one of path (shards) or source (images)")
        return self


class EvalConfig(StrictModel):
    """Transfer protocols, each run for the pretrained encoder and the baselines in one evaluation."""

    datasets: tuple[EvalDataset, ...] = Field(
        (),
        description="Labelled evaluation sets evaluated beside the ingested shards (which are always evaluated, "
        "named after the source: with labels by every protocol, without labels by the label-free ones).",
    )
    knn: tuple[KnnSetting, ...] = Field(
        (KnnSetting(k=20, temperature=0.07), KnnSetting(k=200, temperature=0.1)),
        description="Weighted cosine kNN settings; the first is the headline number.",
    )
    linear_probe: bool = True
    linear_max_iter: PositiveInt = Field(200, description="L-BFGS iterations per fit.")
    linear_c: tuple[PositiveFloat, ...] = Field(
        (0.01, 0.1, 1.0, 10.0), description="Inverse L2 strengths (scikit-learn's C) swept on the validation split."
    )
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="Share of train held out to pick the sweep.")
    fewshot_shots: tuple[PositiveInt, ...] = Field((1, 5, 10), description="Labels per class for few-shot probes.")
    fewshot_seeds: PositiveInt = 3
    finetune_epochs: NonNegativeInt = Field(0, description="End-to-end fine-tuning epochs; 0 skips it.")
    finetune_lr: PositiveFloat = 1e-3
    finetune_backbone_lr_scale: float = Field(0.1, gt=0.0, le=1.0, description="Backbone LR = this x head LR.")
    health: bool = Field(True, description="Label-free health: RankMe, std, alignment, uniformity.")
    baselines: tuple[Literal["random_init", "pixels"], ...] = ("random_init", "pixels")
    pixel_baseline_max_side: PositiveInt = Field(64, description="Raw-pixel baseline only up to this size.")
    plots: bool = True
    tsne_samples: PositiveInt = 2000
    batch_size: PositiveInt = 256
    seed: int = 0
