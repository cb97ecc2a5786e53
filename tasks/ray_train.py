"""Ray Train adapter: runs ``sslcore`` training under ``TorchTrainer`` (DDP: gloo on CPU, nccl on
GPU). Kept free of Prefect so that Ray workers import only what they need."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from torch.utils.data import DataLoader

from sslcore.config import PipelineConfig
from sslcore.data.manifest import read_manifest
from sslcore.data.stream import TrainStream, shard_urls
from sslcore.health import backbone_health, collapse_warning
from sslcore.methods import as_method, build_method
from sslcore.train import TrainState, build_optimizer, load_state, plan_steps, save_state, train_epoch


def _mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Runs on every Ray Train worker."""
    cfg = PipelineConfig.model_validate(loop_config["config"])
    folder = loop_config["shard_folder"]
    manifest = read_manifest(folder, cfg.storage)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, cfg.ray.cpus_per_worker))

    plan = plan_steps(cfg, manifest.split("train").samples)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    method = build_method(cfg)
    optimizer = build_optimizer(method, cfg.train)
    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_state(Path(d), method, optimizer)
        if rank == 0:
            print(f"resuming from epoch {state.epoch} (step {state.step}) of {cfg.train.epochs}")
    # Identical weights came from the shared seed; from here on each rank draws its own masks and
    # crops, deterministically in (seed, epoch, rank) like the data stream below.
    torch.manual_seed(cfg.train.seed + 7919 * state.epoch + 104729 * (rank + 1))
    # The methods keep their own buffers identical across ranks (gathered queues, all-reduced
    # centers), so DDP need not overwrite them with rank 0's before every forward.
    model = ray.train.torch.prepare_model(method, parallel_strategy_kwargs={"broadcast_buffers": False})
    api = as_method(model)

    stream = TrainStream(
        shard_urls(manifest, folder, "train"),
        api.view_transform(cfg.augment, cfg.model.image_size),
        rank=rank,
        world_size=world,
        seed=cfg.train.seed + 7919 * state.epoch,  # a resumed run does not replay its first epochs' data
        storage=cfg.storage,
    )
    loader = DataLoader(
        stream,
        batch_size=cfg.train.batch_size // world,
        num_workers=cfg.train.loader_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.train.loader_workers > 0,
        prefetch_factor=4 if cfg.train.loader_workers > 0 else None,
    )
    batches = iter(loader)
    for epoch in range(state.epoch, cfg.train.epochs):
        start = time.perf_counter()
        means, last_batch = train_epoch(model, batches, optimizer, plan, state, device=device, amp=cfg.train.amp)
        elapsed = time.perf_counter() - start
        # Label-free collapse guard: spread and effective rank of backbone features.
        health = backbone_health(api.backbone, last_batch[0].to(device))
        means = _mean_over_ranks(means | health)
        warning = collapse_warning(means)
        metrics = {
            "epoch": float(epoch + 1),
            "step": float(state.step),
            **means,
            "collapse_warning": float(warning is not None),
            "images_per_s": plan.steps_per_epoch * cfg.train.batch_size / elapsed,
            "epoch_time_s": elapsed,
        }
        state.epoch = epoch + 1
        state.history.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_state(Path(tmp), model, optimizer, state)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch-{epoch + 1:04d}")
        if rank == 0:
            print(
                f"epoch {epoch + 1}/{cfg.train.epochs}  loss {metrics['loss']:.4f}  "
                f"{metrics['images_per_s']:.0f} img/s  lr {metrics['lr']:.2e}  "
                f"effective rank {metrics['health_effective_rank']:.1f}",
                flush=True,
            )
            if warning is not None:
                print(f"WARNING epoch {epoch + 1}: {warning}", flush=True)
    return {"history": state.history, "steps": state.step}


@dataclass(frozen=True)
class TrainOutcome:
    run_name: str
    storage_path: str
    checkpoint_path: str
    history: list[dict[str, float]]
    steps: int


def ray_runtime_env() -> dict[str, Any]:
    # Ray Train tees print() into its logger as well, which shows every line twice; keep plain print.
    return {
        "env_vars": {
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        }
    }


def connect(address: str | None) -> None:
    """Start a local Ray, or join the cluster at ``address`` / ``$RAY_ADDRESS``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target:
        ray.init(address=target, runtime_env=ray_runtime_env(), log_to_driver=True)
    else:
        # The dashboard serves the state API that Ray Train's controller polls; loopback only.
        ray.init(
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env=ray_runtime_env(),
            log_to_driver=True,
        )


def fit(cfg: PipelineConfig, shard_folder: str, storage_path: str, run_name: str) -> TrainOutcome:
    """Run (or resume: same ``storage_path`` and ``run_name``) the distributed training."""
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "shard_folder": shard_folder},
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker, **({"GPU": 1} if cfg.ray.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # our one line per epoch instead
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        from sslcore.train import read_meta

        meta = read_meta(Path(d))
    return TrainOutcome(
        run_name=run_name,
        storage_path=storage_path,
        checkpoint_path=result.checkpoint.path,
        history=meta.history,
        steps=meta.step,
    )
