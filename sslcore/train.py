"""The framework-free training core: optimizer, schedules per step, one step, one epoch, checkpoint
state.

``tasks/ray_train.py`` adapts this to Ray Train; nothing here knows about Ray, Prefect or MLflow.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from fsspec import AbstractFileSystem
from torch import Tensor, nn

from sslcore.config import PipelineConfig, StorageConfig, TrainConfig
from sslcore.methods import StepValues, as_method, check_method_backbone, lr_scale, unwrap
from sslcore.schedules import StepPlan, scaled_lr, warmup_cosine
from sslcore.storage import filesystem, is_remote

STATE_FILE = "state.pt"
META_FILE = "meta.json"
STATE_BYTES_KEY = "state_bytes"  # in META_FILE: the size of STATE_FILE, for completeness checks


@dataclass
class TrainState:
    """Where training stands; saved with every checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps
    history: list[dict[str, float]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)  # the current epoch's step scalars so far
    corrupt_samples: int = 0  # unreadable samples skipped, all ranks together
    resumed_from: list[int] = field(default_factory=list)  # the step of every resume
    workers: list[dict[str, Any]] = field(default_factory=list)  # where each rank ran
    startup: dict[str, float] = field(default_factory=dict)  # fixed costs of the latest (re)start
    planned_steps: int | None = None  # set when train.time_budget_s re-planned the run
    collapse_streak: int = 0  # consecutive epoch checks that flagged collapse
    stopped: str | None = None  # why training ended before its plan (train.on_collapse=stop)
    best_metric: str | None = None  # train.keep_best: the monitor score compared ...
    best_score: float | None = None  # ... its best value so far ...
    best_step: int | None = None  # ... and the step of that checkpoint


def plan_steps(cfg: PipelineConfig, train_samples: int, total_steps: int | None = None) -> StepPlan:
    """Steps per epoch from the sample count (an epoch is ``train_samples`` images, dropping the
    last partial global batch), the schedule lengths and the learning rate: ``train.lr`` scaled with
    the batch and by the method's :func:`~sslcore.methods.lr_scale`.

    ``total_steps`` replaces ``train.epochs`` worth of steps (a time budget's re-plan); the last
    epoch may then be partial.

    Also checks, cheaply, that the method can run on the backbone (patch-based methods need a
    ViT), so that a bad pairing fails here, before any worker starts.

    Raises:
        ValueError: fewer samples than one global batch.
        ConfigError: the method needs a ViT and ``cfg.model`` is not one.
    """
    check_method_backbone(cfg)
    steps = train_samples // cfg.train.batch_size
    if steps < 1:
        raise ValueError(
            f"the train split has {train_samples} samples, fewer than one global batch "
            f"(train.batch_size={cfg.train.batch_size}): lower train.batch_size or add data"
        )
    if cfg.train.max_steps_per_epoch is not None:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    peak = scaled_lr(cfg.train.lr, cfg.train.batch_size) * lr_scale(cfg)
    plan = StepPlan(
        steps_per_epoch=steps,
        total_steps=steps * cfg.train.epochs,
        warmup_steps=0,
        peak_lr=peak,
        final_lr=peak * cfg.train.min_lr_ratio,
        weight_decay=cfg.train.weight_decay,
    )
    return replan_steps(plan, cfg.train, total_steps or plan.total_steps)


def replan_steps(plan: StepPlan, cfg: TrainConfig, total_steps: int) -> StepPlan:
    """``plan`` with ``total_steps`` steps (a time budget's re-plan, or a resumed one): the same epoch
    length and learning rates, the warm-up clamped to the new length. Nothing is checked again: the
    run was validated when ``plan`` was made (:func:`plan_steps`)."""
    warmup = min(round(cfg.warmup_epochs * plan.steps_per_epoch), total_steps)
    return replace(plan, total_steps=total_steps, warmup_steps=warmup)


def lr_at(plan: StepPlan, step: int) -> float:
    return warmup_cosine(step, plan.total_steps, plan.warmup_steps, plan.peak_lr, plan.final_lr)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters (frozen teachers are left out); biases and norm
    parameters (1-D tensors) get no weight decay. The decaying group is marked ``"decay": True``
    so that a weight-decay schedule can find it."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "decay": True},
        {"params": no_decay, "weight_decay": 0.0, "decay": False},
    ]
    fused = all(p.is_cuda for p in decay + no_decay) and bool(decay + no_decay)  # one kernel for all params
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, fused=fused or None)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` (CUDA or CPU) when enabled, else a no-op. On a CPU it pays only with native
    bf16 instructions (AVX-512 BF16, AMX): :func:`amp_enabled` decides from the config."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def amp_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether training on ``device`` runs under bf16 autocast: ``train.amp`` on CUDA, ``train.cpu_amp`` on a CPU."""
    return cfg.amp if device.type == "cuda" else cfg.cpu_amp if device.type == "cpu" else False


def train_step(
    model: nn.Module,
    views: list[Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    lr: float,
    device: torch.device,
    amp: bool = False,
    values: StepValues | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """One optimizer step on a list of views (each (B, C, S_i, S_i)); returns detached scalars.

    Args:
        model: A method (see :mod:`sslcore.methods.base`), possibly DDP-wrapped; with
            ``values=None`` any module mapping ``views`` to ``{"loss": ...}`` works.
        views: The batch, one tensor per view.
        optimizer: From :func:`build_optimizer`.
        lr: Learning rate for this step.
        device: Where to compute.
        amp: bf16 autocast (see :func:`amp_enabled`).
        channels_last: Move 4-D views to channels-last memory (with a channels-last model).
        values: The method's scheduled values for this step (``method.step_values(step, plan)``).
            When given, they are passed to ``forward``, ``values.weight_decay`` (if set) is applied
            to the decaying parameter group, and the method's ``before_optimizer_step`` (gradient
            clipping, last-layer freezing) and ``after_optimizer_step`` (EMA teachers) hooks run.

    Returns:
        The forward's scalars, ``lr``, and the scheduled values that are set.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
        if values is not None and values.weight_decay is not None and group.get("decay", False):
            group["weight_decay"] = values.weight_decay
    memory = torch.channels_last if channels_last else torch.preserve_format
    views = [v.to(device, non_blocking=True, memory_format=memory) for v in views]
    with autocast(device, amp):
        out = model(views) if values is None else model(views, values)
    loss = out["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()}: lower train.lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if values is not None:
        as_method(model).before_optimizer_step(values)
    optimizer.step()
    if values is not None:
        as_method(model).after_optimizer_step(values)
    report = {k: float(v.detach()) for k, v in out.items()} | {"lr": lr}
    if values is not None:
        scheduled = {
            "weight_decay": values.weight_decay,
            "momentum": values.momentum,
            "teacher_temp": values.teacher_temp,
        }
        report |= {k: v for k, v in scheduled.items() if v is not None}
    return report


def step_seed(seed: int, rank: int, step: int) -> int:
    """The RNG seed of one rank's step: masks, drop paths and noise depend only on the position, so
    a run resumed from a checkpoint draws what the uninterrupted run would have drawn."""
    return (seed * 1_000_003 + rank * 10_007 + step) % (2**63)


def run_steps(
    model: nn.Module,
    batches: Iterator[list[Tensor]],
    optimizer: torch.optim.Optimizer,
    plan: StepPlan,
    state: TrainState,
    *,
    stop: int,
    device: torch.device,
    amp: bool = False,
    seed: int | None = None,
    rank: int = 0,
    channels_last: bool = False,
    on_step: Callable[[TrainState, dict[str, float]], None] | None = None,
) -> list[Tensor]:
    """Optimizer steps from ``state.step`` up to ``stop``, each with its scheduled values and
    learning rate; ``state.step`` advances and every scalar is added to ``state.sums``.

    Args:
        seed: When given, the torch RNG is reseeded before every step with
            :func:`step_seed` ``(seed, rank, step)``.
        on_step: Called after every step with the state and the step's scalars (progress reports).

    Returns:
        The last batch (for label-free health probes).
    """
    method = as_method(model)
    batch: list[Tensor] = []
    while state.step < stop:
        batch = next(batches)
        if seed is not None:
            torch.manual_seed(step_seed(seed, rank, state.step))
        out = train_step(
            model,
            batch,
            optimizer,
            lr=lr_at(plan, state.step),
            device=device,
            amp=amp,
            values=method.step_values(state.step, plan),
            channels_last=channels_last,
        )
        state.step += 1
        state.sums["steps"] = state.sums.get("steps", 0.0) + 1.0
        for k, v in out.items():
            state.sums[k] = state.sums.get(k, 0.0) + v
        if on_step is not None:
            on_step(state, out)
    return batch


def pop_means(state: TrainState) -> dict[str, float]:
    """The mean of every scalar since the last call (the current epoch); resets the sums."""
    steps = state.sums.pop("steps", 0.0)
    means = {k: v / steps for k, v in state.sums.items()} if steps else {}
    state.sums = {}
    return means


def train_epoch(
    model: nn.Module,
    batches: Iterator[list[Tensor]],
    optimizer: torch.optim.Optimizer,
    plan: StepPlan,
    state: TrainState,
    *,
    device: torch.device,
    amp: bool = False,
) -> tuple[dict[str, float], list[Tensor]]:
    """``plan.steps_per_epoch`` steps (see :func:`run_steps`).

    Returns:
        The mean over the epoch's steps of every scalar :func:`train_step` reported, and the last
        batch (for label-free health probes).
    """
    last = run_steps(
        model, batches, optimizer, plan, state, stop=state.step + plan.steps_per_epoch, device=device, amp=amp
    )
    return pop_means(state), last


def save_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    """Write tensors with ``torch.save`` (loadable with ``weights_only=True``) and progress as JSON.

    The method's whole ``state_dict`` is saved: EMA teachers, queues and centers included. The
    progress file comes last and records the tensor file's size (``state_bytes``), so that a copy
    of the folder can be checked for completeness without loading it (:func:`checkpoint_state`).

    Raises:
        OSError: the folder cannot be written (a full disk says so, with the folder).
    """
    buffer = io.BytesIO()
    torch.save(
        {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        buffer,
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STATE_FILE).write_bytes(buffer.getbuffer())
        meta = asdict(state) | {STATE_BYTES_KEY: buffer.getbuffer().nbytes}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(
                exc.errno, f"no space left for the checkpoint in {folder} (free some space or move it elsewhere)"
            ) from None
        raise


def checkpoint_state(fs: AbstractFileSystem, folder: str) -> TrainState | None:
    """The progress of a checkpoint folder (local or remote) if it is complete, else None.

    Complete: the progress file parses and the tensor file has the size it records (checkpoints
    from before that record must load with ``weights_only=True``). A missing or partial file reads
    as incomplete; any other storage error is raised, so that an outage never passes for an
    incomplete checkpoint.
    """
    folder = folder.rstrip("/")
    try:
        meta = json.loads(fs.cat_file(f"{folder}/{META_FILE}"))
        expected = meta.get(STATE_BYTES_KEY)
        if expected is not None:
            if fs.size(f"{folder}/{STATE_FILE}") != expected:
                return None
        else:
            torch.load(io.BytesIO(fs.cat_file(f"{folder}/{STATE_FILE}")), map_location="cpu", weights_only=True)
        known = set(TrainState.__dataclass_fields__)
        return TrainState(**{k: v for k, v in meta.items() if k in known})
    except (FileNotFoundError, ValueError, RuntimeError, EOFError, KeyError, TypeError, AttributeError):
        return None


def load_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> TrainState:
    """Restore what :func:`save_state` wrote into ``model`` (or the method it wraps); never
    unpickles arbitrary objects."""
    blob = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(blob["model"])
    if optimizer is not None:
        optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    return read_meta(folder)


def backbone_state_dict(location: str | Path, storage: StorageConfig | None = None) -> dict[str, Tensor]:
    """The backbone's weights from a checkpoint folder (local, or an ``s3://`` URL), with timm's
    own key names."""
    if isinstance(location, str) and is_remote(location):
        fs, path = filesystem(location, storage)
        blob = torch.load(
            io.BytesIO(fs.cat_file(f"{path.rstrip('/')}/{STATE_FILE}")), map_location="cpu", weights_only=True
        )
    else:
        blob = torch.load(Path(location) / STATE_FILE, map_location="cpu", weights_only=True)
    prefix = "backbone."
    return {k[len(prefix) :]: v for k, v in blob["model"].items() if k.startswith(prefix)}


def read_meta(folder: Path) -> TrainState:
    meta = json.loads((folder / META_FILE).read_text())
    known = set(TrainState.__dataclass_fields__)
    return TrainState(**{k: v for k, v in meta.items() if k in known})
