"""The ``flow`` section, the stage names and :class:`PipelineConfig`, which holds every section."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, model_validator

from sslcore.config.base import ConfigError, StrictModel
from sslcore.config.evaluate import EvalConfig
from sslcore.config.ingest import IngestConfig
from sslcore.config.model import AugmentConfig, ModelConfig
from sslcore.config.registry import MlflowConfig, PromotionConfig
from sslcore.config.storage import StorageConfig
from sslcore.config.train import RayConfig, TrainConfig
from sslcore.method_config import MethodConfig, SimCLRConfig

__all__ = [
    "CACHED_STAGES",
    "DEFAULT_WORK_DIR",
    "STAGES",
    "FlowConfig",
    "PipelineConfig",
    "StageRetries",
    "StageTimeouts",
    "check_force",
]

DEFAULT_WORK_DIR = "./sslpipe-runs"


STAGES = ("ingest", "pretrain", "evaluate", "register")
CACHED_STAGES = ("ingest", "pretrain", "evaluate")  # register reconciles with MLflow on every run


def check_force(force: Iterable[str]) -> tuple[str, ...]:
    """Validate the stage names given to ``--force`` (only cached stages can be forced)."""
    names = tuple(force)
    for name in names:
        if name == "register":
            raise ConfigError("--force register: registration is never cached; every run reconciles it with MLflow")
        if name not in CACHED_STAGES:
            raise ConfigError(f"--force {name}: not a stage; choose from {', '.join(CACHED_STAGES)}")
    return names


# Field names are the stage names; "register" shadows ABCMeta.register on the class, harmlessly.
# The warning pydantic gives for it is silenced for these two class definitions only.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class StageTimeouts(StrictModel):
        """Wall-clock limit of each stage attempt, in seconds; a stage over it fails (and may be retried)."""

        ingest: PositiveFloat = 6 * 3600
        pretrain: PositiveFloat = 72 * 3600
        evaluate: PositiveFloat = 6 * 3600
        register: PositiveFloat = 3600
        promote: PositiveFloat = 3600

    class StageRetries(StrictModel):
        """Retries of each stage after a transient failure (never after bad config or bad data)."""

        ingest: NonNegativeInt = 2
        pretrain: NonNegativeInt = 1
        evaluate: NonNegativeInt = 2
        register: NonNegativeInt = 3
        promote: NonNegativeInt = 3


class FlowConfig(StrictModel):
    """How the Prefect flows run the stages: result caching across runs, retries and time limits."""

    cache: bool = Field(
        True, description="Reuse a stage's result when its inputs (config, upstream record, code) are unchanged."
    )
    result_storage: str | None = Field(
        None, description="Stage results for the cache: folder or s3://; default <work_dir>/results."
    )
    timeouts_s: StageTimeouts = Field(default_factory=StageTimeouts)
    retries: StageRetries = Field(default_factory=StageRetries)
    retry_delay_s: NonNegativeFloat = Field(10.0, description="Wait before the first retry; doubles with each retry.")


class PipelineConfig(StrictModel):
    """The whole pipeline: one section per stage plus where things live."""

    work_dir: str = Field(DEFAULT_WORK_DIR, description="Shards, checkpoints and MLflow files go here.")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=SimCLRConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)

    @model_validator(mode="after")
    def _batch_divides(self) -> PipelineConfig:
        if self.train.batch_size % self.ray.num_workers:
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) must be divisible by ray.num_workers "
                f"({self.ray.num_workers})"
            )
        return self

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir).expanduser().resolve()

    @property
    def result_storage(self) -> str:
        """``flow.result_storage`` (local or s3://) or ``<work_dir>/results``."""
        return self.flow.result_storage or str(self.work_path / "results")

    @property
    def shard_dir(self) -> str:
        """Where ingest writes: ``ingest.output`` (local or s3://) or ``<work_dir>/shards``."""
        return self.ingest.output or str(self.work_path / "shards")
