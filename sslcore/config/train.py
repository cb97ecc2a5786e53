"""The ``train`` and ``ray`` sections: the training loop and where it runs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from sslcore.config.base import StrictModel

__all__ = ["RayConfig", "TrainConfig"]


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
