"""Typed pipeline configuration.

Every section is a frozen pydantic model that rejects unknown keys, so a typo in a YAML file or a
``--set`` override fails before any work starts. YAML, CLI and flow parameters are parsed once, at
the edge, by :func:`load_config`; everything below receives typed objects.

Where each part lives (every name is re-exported here, so ``from sslcore.config import X`` works):

- :mod:`~sslcore.config.base`: ``StrictModel`` (defined in :mod:`sslcore.method_config`) and ``ConfigError``.
- :mod:`~sslcore.config.storage`: ``storage`` (``StorageConfig``).
- :mod:`~sslcore.config.ingest`: ``ingest`` (``IngestConfig``) and its sources (``Source`` and members).
- :mod:`~sslcore.config.model`: ``model`` (``ModelConfig``) and ``augment`` (``AugmentConfig``).
- :mod:`~sslcore.config.train`: ``train`` (``TrainConfig``) and ``ray`` (``RayConfig``).
- :mod:`~sslcore.config.evaluate`: ``eval`` (``EvalConfig``, ``EvalDataset``, ``KnnSetting``).
- :mod:`~sslcore.config.registry`: ``mlflow`` (``MlflowConfig``) and ``promotion`` (``PromotionConfig``,
  ``Guard`` and the default guards).
- :mod:`~sslcore.config.pipeline`: ``flow`` (``FlowConfig``, stage timeouts and retries), the stage
  names, ``check_force`` and ``PipelineConfig``, which holds every section.
- :mod:`~sslcore.config.loading`: ``load_config``, ``build_config``, ``parse_override`` and the
  one-line validation error messages.
- The ``method`` section's models live in :mod:`sslcore.method_config`.

Importing this package has no side effects beyond defining these names.

Example:
    >>> cfg = load_config(None, ["train.epochs=3", "method.temperature=0.2"])
    >>> cfg.train.epochs
    3
"""

from __future__ import annotations

from sslcore.config.base import ConfigError, StrictModel
from sslcore.config.evaluate import EvalConfig, EvalDataset, KnnSetting
from sslcore.config.ingest import (
    IMAGE_EXTENSIONS,
    DigitsSource,
    FashionMnistSource,
    FolderSource,
    IngestConfig,
    ShardsSource,
    Source,
)
from sslcore.config.loading import (
    SENSITIVE_WORDS,
    build_config,
    format_validation_error,
    load_config,
    parse_override,
)
from sslcore.config.model import AugmentConfig, ModelConfig
from sslcore.config.pipeline import (
    CACHED_STAGES,
    DEFAULT_WORK_DIR,
    STAGES,
    FlowConfig,
    PipelineConfig,
    StageRetries,
    StageTimeouts,
    check_force,
)
from sslcore.config.registry import LABEL_FREE_GUARDS, LABELLED_GUARDS, Guard, MlflowConfig, PromotionConfig
from sslcore.config.storage import StorageConfig
from sslcore.config.train import RayConfig, TrainConfig
from sslcore.method_config import MethodConfig, SimCLRConfig

__all__ = [
    "CACHED_STAGES",
    "DEFAULT_WORK_DIR",
    "IMAGE_EXTENSIONS",
    "LABELLED_GUARDS",
    "LABEL_FREE_GUARDS",
    "SENSITIVE_WORDS",
    "STAGES",
    "AugmentConfig",
    "ConfigError",
    "DigitsSource",
    "EvalConfig",
    "EvalDataset",
    "FashionMnistSource",
    "FlowConfig",
    "FolderSource",
    "Guard",
    "IngestConfig",
    "KnnSetting",
    "MethodConfig",
    "MlflowConfig",
    "ModelConfig",
    "PipelineConfig",
    "PromotionConfig",
    "RayConfig",
    "ShardsSource",
    "SimCLRConfig",
    "Source",
    "StageRetries",
    "StageTimeouts",
    "StorageConfig",
    "StrictModel",
    "TrainConfig",
    "build_config",
    "check_force",
    "format_validation_error",
    "load_config",
    "parse_override",
]
