"""Typed records that stages hand to each other. Each is small, JSON-serialisable and enough to
re-run the next stage alone (``sslpipe pretrain --from ingest.json`` and so on)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)
        return path


R = TypeVar("R", bound=Record)


def load_record(cls: type[R], path: Path) -> R:
    if not path.is_file():
        raise FileNotFoundError(f"no {cls.__name__} at {path}: run the previous stage first")
    return cls.model_validate_json(path.read_text())


class IngestRecord(Record):
    shard_folder: str = Field(description="Folder (or URL) with the shards and manifest.json.")
    manifest_path: str
    fingerprint: str
    samples: dict[str, int] = Field(description="Samples per split.")
    num_classes: int
    rejected: int
    duplicates: int = 0
    reused: bool = Field(description="True when a complete earlier output was found and kept.")
    resumed: int = Field(0, description="Samples kept from complete shards of an interrupted run.")
    eval_datasets: dict[str, str] = Field(
        default_factory=dict,
        description="Shard folder per eval.datasets entry (sources ingested here, shards as given)",
    )
    duration_s: float


class PretrainRecord(Record):
    ingest: IngestRecord
    run_name: str
    storage_path: str
    checkpoint_path: str = Field(description="The checkpoint to evaluate and register (the best with train.keep_best).")
    last_checkpoint_path: str | None = Field(None, description="The run's last checkpoint.")
    best_step: int | None = Field(None, description="train.keep_best: the step of the best checkpoint.")
    best_metric: str | None = Field(None, description="train.keep_best: the monitor score compared.")
    best_score: float | None = None
    mlflow_run_id: str | None = Field(None, description="The MLflow run training logged into live, if reachable.")
    epochs: int
    steps: int
    final_loss: float
    images_per_s: float = Field(description="Mean training throughput over the run's epochs.")
    history: list[dict[str, float]]
    resumed_from: list[int] = Field(default_factory=list, description="Step of every resume from a checkpoint.")
    corrupt_samples: int = Field(0, description="Unreadable samples skipped while streaming.")
    workers: list[dict[str, str | int]] = Field(default_factory=list, description="Rank, node and host of each worker.")
    startup: dict[str, float] = Field(
        default_factory=dict, description="Fixed start-up cost: Ray connect, worker group, first batch, total (s)."
    )
    duration_s: float


class EvaluateRecord(Record):
    pretrain: PretrainRecord
    metrics: dict[str, float] = Field(description="<dataset>/<encoder>/<protocol> -> value.")
    headline: str = Field(description="Key of the primary metric, e.g. digits/ssl/knn_k20_top1.")
    baseline: str | None = Field(description="The same protocol for the random-init backbone.")
    datasets: list[str]
    data_fingerprints: dict[str, str] = Field(default_factory=dict, description="Manifest fingerprint per dataset.")
    data_uris: dict[str, str] = Field(default_factory=dict, description="Shard folder per dataset.")
    artifacts: list[str] = Field(default_factory=list, description="Plots and tables to log with the run.")
    labelled: bool = Field(True, description="Some dataset had labels: kNN, linear and few-shot probes ran.")
    protocols: dict[str, list[str]] = Field(
        default_factory=dict, description="Protocol families that ran per dataset (knn, linear, ..., retrieval)."
    )
    duration_s: float


class RegisterRecord(Record):
    reused: bool = Field(False, description="An earlier attempt had already registered this training run.")
    tracking_uri: str
    experiment_id: str
    run_id: str
    model_name: str
    version: str
    alias: str
    model_uri: str = Field(description="models:/<name>@<alias>")
    duration_s: float
