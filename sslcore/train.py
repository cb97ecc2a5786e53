"""The framework-free training core: optimizer, schedules per step, one step, checkpoint state.

``tasks/ray_train.py`` adapts this to Ray Train; nothing here knows about Ray, Prefect or MLflow.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sslcore.config import PipelineConfig, TrainConfig
from sslcore.schedules import scaled_lr, warmup_cosine

STATE_FILE = "state.pt"
META_FILE = "meta.json"


@dataclass
class TrainState:
    """Where training stands; saved with every checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class StepPlan:
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    final_lr: float


def plan_steps(cfg: PipelineConfig, train_samples: int) -> StepPlan:
    """Steps per epoch from the sample count (an epoch is ``train_samples`` images, dropping the
    last partial global batch), the schedule lengths and the batch-scaled learning rate."""
    steps = train_samples // cfg.train.batch_size
    if steps < 1:
        raise ValueError(
            f"the train split has {train_samples} samples, fewer than one global batch "
            f"(train.batch_size={cfg.train.batch_size}): lower train.batch_size or add data"
        )
    if cfg.train.max_steps_per_epoch is not None:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    total = steps * cfg.train.epochs
    peak = scaled_lr(cfg.train.lr, cfg.train.batch_size)
    return StepPlan(
        steps_per_epoch=steps,
        total_steps=total,
        warmup_steps=min(round(cfg.train.warmup_epochs * steps), total),
        peak_lr=peak,
        final_lr=peak * cfg.train.min_lr_ratio,
    )


def lr_at(plan: StepPlan, step: int) -> float:
    return warmup_cosine(step, plan.total_steps, plan.warmup_steps, plan.peak_lr, plan.final_lr)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; biases and norm parameters (1-D tensors) get no weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (CPU training stays fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(
    model: nn.Module,
    views: list[Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    lr: float,
    device: torch.device,
    amp: bool = True,
) -> dict[str, float]:
    """One optimizer step on a list of views (each (B, C, H, W)); returns detached scalars."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    views = [v.to(device, non_blocking=True) for v in views]
    with autocast(device, amp):
        out = model(views)
    loss = out["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()}: lower train.lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in out.items()} | {"lr": lr}


def save_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    """Write tensors with ``torch.save`` (loadable with ``weights_only=True``) and progress as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        folder / STATE_FILE,
    )
    (folder / META_FILE).write_text(json.dumps(asdict(state), indent=2))


def load_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> TrainState:
    """Restore what :func:`save_state` wrote; never unpickles arbitrary objects."""
    blob = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(blob["model"])
    if optimizer is not None:
        optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    meta = json.loads((folder / META_FILE).read_text())
    return TrainState(**meta)


def backbone_state_dict(folder: Path) -> dict[str, Tensor]:
    """The backbone's weights from a checkpoint folder, with timm's own key names."""
    blob = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    prefix = "backbone."
    return {k[len(prefix) :]: v for k, v in blob["model"].items() if k.startswith(prefix)}


def read_meta(folder: Path) -> TrainState:
    return TrainState(**json.loads((folder / META_FILE).read_text()))
