"""Typed pipeline configuration.

Every section is a frozen pydantic model that rejects unknown keys, so a typo in a YAML file or a
``--set`` override fails before any work starts. YAML, CLI and flow parameters are parsed once, at
the edge, by :func:`load_config`; everything below receives typed objects.

Example:
    >>> cfg = load_config(None, ["train.epochs=3", "method.temperature=0.2"])
    >>> cfg.train.epochs
    3
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from sslcore.method_config import MethodConfig, SimCLRConfig, StrictModel

__all__ = ["ConfigError", "MethodConfig", "PipelineConfig", "SimCLRConfig", "load_config"]

DEFAULT_WORK_DIR = "./sslpipe-runs"
SENSITIVE_WORDS = ("secret", "key_id", "token", "password", "storage")  # never echo these values


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the key and the fix."""


# --------------------------------------------------------------------------- ingest


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class StorageConfig(StrictModel):
    """How to reach ``s3://`` URLs (shards, sources, checkpoints) through s3fs.

    Unset fields fall back to the usual places: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` and ``~/.aws``. Secrets are ``SecretStr``: they print
    as ``**********`` in logs, manifests, MLflow params and Prefect artifacts.
    """

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000.")
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    region: str | None = None
    profile: str | None = None
    max_attempts: Annotated[
        PositiveInt,
        Field(
            description="Tries per S3 request, the first included (botocore 'standard' retries of 5xx, throttling "
            "and dropped connections, with jittered exponential backoff capped at 20 s: at 8, about 35 s of waiting "
            "on average, 71 s at most) before the stage fails; for throttling and dropped connections s3fs repeats "
            "the whole sequence up to 5 times."
        ),
    ] = 8


class DigitsSource(StrictModel):
    """scikit-learn's bundled *digits*: 1,797 real 8x8 grayscale images of 10 classes."""

    kind: Literal["digits"] = "digits"


class FolderSource(StrictModel):
    """Image files under a local folder or an ``s3://bucket/prefix``, found recursively."""

    kind: Literal["folder"] = "folder"
    path: str = Field(description="Local folder or s3://bucket/prefix, read recursively.")
    labels: Literal["none", "subfolder", "file"] = Field(
        "none",
        description="'subfolder': the first sub-folder level names the class (ImageFolder); "
        "'file': labels_file maps relative paths to labels.",
    )
    labels_file: str | None = Field(None, description="CSV (path,label) or JSONL ({path, label}).")
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS

    @model_validator(mode="after")
    def _labels_file_given(self) -> FolderSource:
        if (self.labels == "file") != (self.labels_file is not None):
            raise ValueError("set labels_file together with labels=file (and only then)")
        return self


class FashionMnistSource(StrictModel):
    """Fashion-MNIST IDX files (Debian's ``dataset-fashion-mnist`` puts them in the default path)."""

    kind: Literal["fashion_mnist"] = "fashion_mnist"
    path: str = "/usr/share/datasets/fashion-mnist"
    limit: PositiveInt | None = Field(None, description="Use only the first N images of each split.")


class ShardsSource(StrictModel):
    """Existing webdataset shards: validated and re-sharded, never extracted to disk."""

    kind: Literal["webdataset"] = "webdataset"
    path: str = Field(description="Folder or s3:// prefix holding .tar shards.")
    max_member_bytes: PositiveInt = Field(64 * 1024 * 1024, description="Larger tar members are rejected.")


Source = Annotated[DigitsSource | FolderSource | FashionMnistSource | ShardsSource, Field(discriminator="kind")]


class IngestConfig(StrictModel):
    source: Source = Field(default_factory=DigitsSource)
    output: str | None = Field(None, description="Shard folder or s3:// prefix; default <work_dir>/shards.")
    shard_max_samples: PositiveInt = 256
    shard_max_bytes: PositiveInt = 64 * 1024 * 1024
    split: Literal["auto", "hash"] = Field(
        "auto", description="'auto': the source's own train/test split when it has one, else by hash."
    )
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Hash split: share of samples in 'val'.")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Hash split: share of samples in 'test'.")
    mode: Literal["keep", "RGB", "L"] = Field(
        "keep", description="'keep': grayscale stays one channel, everything else becomes RGB."
    )
    max_short_side: PositiveInt | None = Field(None, description="Downscale so the shorter side is at most this.")
    keep_original: bool = Field(True, description="Store valid JPEG/PNG bytes unchanged when no change is needed.")
    max_image_bytes: PositiveInt = Field(16 * 1024 * 1024, description="Larger originals are re-encoded.")
    image_format: Literal["png", "jpeg", "webp"] = Field(
        "png", description="Encoding for images that must be re-encoded."
    )
    jpeg_quality: int = Field(95, ge=1, le=100)
    min_side: PositiveInt = Field(8, description="Images with a shorter side below this are rejected.")
    max_pixels: PositiveInt = Field(
        64_000_000, description="Images with more pixels are rejected (decompression-bomb guard)."
    )
    dedup: bool = Field(True, description="Keep exact duplicates (same encoded bytes) once.")
    max_reject_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Fail (after writing the rejects report) above this share."
    )
    workers: PositiveInt | None = Field(None, description="Decode/encode processes; default all cores.")
    chunk_size: PositiveInt = Field(256, description="Inputs per unit of parallel work.")

    @model_validator(mode="after")
    def _fractions(self) -> IngestConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1 (train would be empty)")
        return self


# --------------------------------------------------------------------------- model and method


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


# --------------------------------------------------------------------------- training and execution


class TrainConfig(StrictModel):
    epochs: PositiveInt = 40
    batch_size: PositiveInt = Field(64, description="Global batch, split evenly across Ray workers.")
    max_steps_per_epoch: PositiveInt | None = Field(None, description="Cap for quick runs and tests.")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: PositiveFloat = Field(2e-3, description="Learning rate at batch 256; scaled linearly with batch.")
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0)
    loader_workers: NonNegativeInt = Field(1, description="DataLoader processes per Ray worker.")
    pin_memory: bool = Field(
        True,
        description="On a GPU, the DataLoader copies each batch into page-locked memory in a thread of the training "
        "process, for an asynchronous copy to the device.",
    )
    loader_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness added to the DataLoader processes: on a CPU, where they share the cores with the "
        "training threads, a positive value lets the training threads win them.",
    )
    amp: bool = Field(True, description="bf16 autocast when a CUDA device is used.")
    cpu_amp: bool = Field(
        False,
        description="bf16 autocast when training on a CPU: +32% images/s for resnet10t at 32 px on an AVX-512 BF16 "
        "EPYC (docs/training.md); slower on CPUs without native bf16 (check lscpu for avx512_bf16 or amx).",
    )
    channels_last: bool = Field(
        True,
        description="channels_last memory format: faster convolutions on CUDA and on CPUs (oneDNN; SimCLR on a "
        "ResNet-18 at 32 px trains ~25% faster on 2 cores).",
    )
    compile: bool = Field(False, description="torch.compile the method (slow first steps, faster after).")
    checkpoint_every_steps: PositiveInt | None = Field(
        None, description="Also checkpoint every N optimizer steps; default only at the end of each epoch."
    )
    time_budget_s: PositiveFloat | None = Field(
        None,
        description="Fit training into this many seconds: after every epoch the run is re-planned to the "
        "steps that fit the rest of the budget at the last epoch's pace (at most train.epochs), so that the "
        "schedules still run to their end.",
    )
    knn_monitor_samples: NonNegativeInt = Field(
        1000,
        description="After every epoch, kNN accuracy on this many labelled train images (and half as many "
        "held-out ones), for a curve of what the backbone learns; 0 turns it off. Shards without labels get a "
        "label-free curve instead: self-retrieval of half as many held-out images against their augmented views.",
    )
    log_every_steps: PositiveInt = Field(
        20,
        description="Step metrics (loss, lr, images/s, data-wait fraction) reach MLflow every N optimizer steps "
        "while training runs; epoch metrics (health, kNN monitor) after every epoch.",
    )
    on_collapse: Literal["warn", "stop"] = Field(
        "warn",
        description="When the label-free health crosses its collapse threshold for collapse_patience epochs in a "
        "row: 'warn' emits the Prefect event sslpipe.training.collapse-warning (and an artifact) and goes on; "
        "'stop' ends training there, keeps the checkpoint and fails the stage with the reason.",
    )
    collapse_patience: PositiveInt = Field(2, description="Consecutive epoch checks that count as collapse.")
    keep_best: bool = Field(
        False,
        description="Also keep the checkpoint with the best monitor score (kNN monitor, or the label-free "
        "retrieval monitor without labels) and evaluate and register that one instead of the last.",
    )
    max_corrupt_samples: NonNegativeInt = Field(
        100, description="Unreadable samples met while streaming are skipped; above this many the run fails."
    )
    seed: int = 0


class RayConfig(StrictModel):
    address: str | None = Field(None, description="Existing cluster; default $RAY_ADDRESS or a local Ray.")
    storage_path: str | None = Field(
        None,
        description="Ray Train checkpoints and results: a local folder or s3://bucket/prefix; default "
        "<work_dir>/ray_results. A multi-node cluster needs a path every node can reach (s3://).",
    )
    num_workers: PositiveInt = 2
    cpus_per_worker: PositiveInt = 1
    use_gpu: bool = False
    max_failures: NonNegativeInt = Field(2, description="Worker-group restarts before the run fails.")
    checkpoints_to_keep: PositiveInt = 2
    poll_interval_s: PositiveFloat = Field(
        0.25,
        description="How often Ray Train's controller polls the workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, Ray's "
        "default 2 s). Every epoch and checkpoint report waits for the next poll: at 2 s a 40-epoch run spends "
        "about a minute and a half waiting (docs/training.md).",
    )


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


class MlflowConfig(StrictModel):
    tracking_uri: str | None = Field(
        None, description="Default $MLFLOW_TRACKING_URI, else sqlite:///<work_dir>/mlflow.db."
    )
    experiment: str = "sslpipe"
    model_name: str = Field("sslpipe-encoder", min_length=1)
    alias: str = Field("candidate", min_length=1)


class Guard(StrictModel):
    """A metric the candidate must not regress on by more than ``tolerance``."""

    metric: str = Field(description="Metric name; '{dataset}' expands to every evaluated dataset.")
    tolerance: NonNegativeFloat = 0.01
    higher_is_better: bool = True


LABELLED_GUARDS = (
    Guard(metric="{dataset}/ssl/linear_top1", tolerance=0.02),
    Guard(metric="{dataset}/ssl/health_collapsed", tolerance=0.0, higher_is_better=False),
)
LABEL_FREE_GUARDS = (
    Guard(metric="{dataset}/ssl/health_collapsed", tolerance=0.0, higher_is_better=False),
    Guard(metric="{dataset}/ssl/health_std_ratio", tolerance=0.1),
)


class PromotionConfig(StrictModel):
    """Champion/challenger gates: when may the ``candidate`` become the ``champion``."""

    primary: str | None = Field(None, description="Metric that must improve; default the evaluation headline.")
    min_margin: float = Field(0.0, description="Candidate must beat the champion's primary by more than this.")
    baseline_margin: float = Field(
        0.0, description="First model ever: must beat the random-init primary by more than this."
    )
    guards: tuple[Guard, ...] | None = Field(
        None,
        description="Metrics that must not regress; default: with labelled evaluation, linear_top1 (tolerance "
        "0.02) and health_collapsed; label-free only, health_collapsed and health_std_ratio (tolerance 0.1).",
    )
    champion_alias: str = "champion"
    previous_alias: str = "previous-champion"
    lock_timeout_s: PositiveFloat = Field(900, description="A promotion lock older than this is stale.")

    def resolved_guards(self, labelled: bool) -> tuple[Guard, ...]:
        """The configured guards, or the defaults for what the evaluation could measure."""
        if self.guards is not None:
            return self.guards
        return LABELLED_GUARDS if labelled else LABEL_FREE_GUARDS


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


# --------------------------------------------------------------------------- loading


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``key.path=value``; the value is read as YAML (``3``, ``true``, ``[1, 2]``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set '{item}': expected KEY=VALUE, e.g. --set train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set '{item}': value is not valid YAML ({exc.__class__.__name__})") from exc
    return key.strip(), value


def _union_member(annotation: Any, tag: Any) -> type[BaseModel] | None:
    """The member of a discriminated union whose ``kind``/``name`` default equals ``tag``."""
    for member in getattr(annotation, "__args__", ()):
        if isinstance(member, type) and issubclass(member, BaseModel):
            for field in ("kind", "name"):
                info = member.model_fields.get(field)
                if info is not None and info.default == tag:
                    return member
        inner = _union_member(member, tag)  # Annotated[Union[...], Field(...)]
        if inner is not None:
            return inner
    return None


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid keys at ``loc`` (minus its last element) within ``model``, for did-you-mean hints.

    pydantic puts the discriminator tag after a union field (``ingest.source.folder.path``): the
    walk follows it into that member, so the hint lists that source's or method's own keys.
    """
    current: Any = model
    parts = list(loc[:-1])
    i = 0
    while i < len(parts):
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(parts[i]))
        if field is None:
            return []
        annotation = field.annotation
        if isinstance(annotation, type):
            current = annotation
        else:  # a union: the next element of the location is the tag
            tag = parts[i + 1] if i + 1 < len(parts) else None
            current = _union_member(annotation, tag)
            if current is None:
                return []
            i += 1
        i += 1
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _without_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the discriminator tag pydantic inserts after a union field (``source.folder.path``)."""
    out: list[Any] = []
    current: Any = PipelineConfig
    skip_next = False
    for part in loc:
        if skip_next:
            skip_next = False
            continue
        out.append(part)
        field = current.model_fields.get(str(part)) if isinstance(current, type) else None
        annotation = field.annotation if field is not None else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            current = annotation
        elif annotation is not None and getattr(annotation, "__args__", None):
            skip_next = True
            current = None
        else:
            current = None
    return tuple(out)


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the key, what is wrong and what to do."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        shown = _without_union_tags(loc) if err["type"] != "union_tag_invalid" else loc
        key = ".".join(str(p) for p in shown) or "<root>"
        if err["type"] == "extra_forbidden":
            valid = _field_names(PipelineConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            parent = ".".join(str(p) for p in shown[:-1])
            hint = (
                f"did you mean '{parent + '.' if parent else ''}{close[0]}'?"
                if close
                else f"valid keys: {', '.join(valid)}"
            )
            problems.append(f"unknown key '{key}' ({hint})")
        elif err["type"] == "union_tag_invalid":
            problems.append(f"{key}: {err['msg']}")
        elif err["type"] == "union_tag_not_found":
            tag = err.get("ctx", {}).get("discriminator", "kind").strip("'")
            problems.append(f"{key}: set {key}.{tag} first (it decides which other keys are valid)")
        else:
            got = err.get("input")
            secret = any(word in key.lower() for word in SENSITIVE_WORDS)
            echo = "" if isinstance(got, dict) or secret else f" (got {got!r})"
            problems.append(f"{key}: {err['msg']}{echo}")
    return "invalid config: " + "; ".join(problems)


def build_config(data: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read an optional YAML file, apply ``key=value`` overrides, validate once."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist: pass an existing YAML file to --config")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise ConfigError(f"config file {p} is not valid YAML: {first}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    return build_config(data)
