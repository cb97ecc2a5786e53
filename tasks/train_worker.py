"""The Ray Train worker loop: what every worker of the pretrain stage runs.

The stage plans the run once (:meth:`WorkerJob.planned`: the manifest read, the step plan made and the
method/backbone pairing checked) and the driver (:func:`tasks.ray_train.fit`) hands every worker that
typed :class:`WorkerJob`. A :class:`Worker` builds the method and optimizer, then runs named steps:

1. :meth:`Worker.restore`: the newest complete checkpoint in storage, or the one Ray registered;
2. :meth:`Worker.open_stream`: the data stream, from the position the restored step implies;
3. :meth:`Worker.train_to_next_stop`: optimizer steps up to the next checkpoint or the epoch's end;
4. :meth:`Worker.close_epoch`: epoch means, health and monitors, the collapse guard, the budget's re-plan;
5. :meth:`Worker.checkpoint`: rank 0 writes, every rank reports to Ray Train;
6. :meth:`Worker.log_epoch`: one line per epoch, and the epoch's metrics to the driver.

Kept free of Prefect so that Ray workers import only what they need.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist
from torch import Tensor

from sslcore import distributed
from sslcore.config import PipelineConfig
from sslcore.data.manifest import Manifest, read_manifest
from sslcore.data.stream import CountedBatches, TrainStream, shard_urls, train_loader
from sslcore.device_augment import AugmentedBatches, decode_for_device, device_views
from sslcore.health import backbone_health, collapse_warning
from sslcore.methods import as_method, build_method
from sslcore.monitor import KnnMonitor, RetrievalMonitor
from sslcore.resources import training_threads
from sslcore.schedules import StepPlan
from sslcore.storage import join, local_folder
from sslcore.train import (
    TrainState,
    amp_enabled,
    build_optimizer,
    load_state,
    plan_steps,
    pop_means,
    replan_steps,
    run_steps,
    save_state,
)
from sslcore.transforms import MultiView
from tasks.checkpoints import check_uploaded, latest_checkpoint, upload_best


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker needs, planned once where the stage starts (:meth:`planned`). The config
    travels as the pydantic object itself (not JSON), so storage secrets arrive intact while every
    ``repr`` masks them.

    Attributes:
        config: The run's validated config.
        shard_folder: The ingested shards (local or ``s3://``).
        storage_path: Ray Train's storage; the run's checkpoints are under ``run_url``.
        run_name: The Ray Train run (a resume reuses it).
        manifest: The shards' manifest, as read when the run was planned.
        plan: The step plan for ``train.epochs`` (a resumed or time-budgeted run re-plans only its
            length, :func:`~sslcore.train.replan_steps`).
        progress_queue: A ``ray.util.queue.Queue`` the driver reads, or None (set by the driver).
        system_metrics_s: Seconds between rank 0's system-metric samples.
    """

    config: PipelineConfig
    shard_folder: str
    storage_path: str
    run_name: str
    manifest: Manifest
    plan: StepPlan
    progress_queue: Any = None
    system_metrics_s: float = 10.0

    @classmethod
    def planned(cls, config: PipelineConfig, shard_folder: str, storage_path: str, run_name: str) -> WorkerJob:
        """Read the manifest and plan the steps: the checks that fail on a bad batch size or a method the
        backbone cannot run (``ValueError``, ``ConfigError``) happen here, before Ray starts anything."""
        manifest = read_manifest(shard_folder, config.storage)
        plan = plan_steps(config, manifest.split("train").samples)
        return cls(config, shard_folder, storage_path, run_name, manifest, plan)

    @property
    def run_url(self) -> str:
        return join(self.storage_path, self.run_name)

    def with_progress(self, queue: Any, system_metrics_s: float) -> WorkerJob:
        return replace(self, progress_queue=queue, system_metrics_s=system_metrics_s)


def train_loop_per_worker(loop_config: dict[str, WorkerJob]) -> dict[str, Any]:
    """Runs on every Ray Train worker (Ray passes ``train_loop_config``, a dict, holding the job)."""
    return Worker(loop_config["job"]).run()


class Worker:
    """One rank's training: its model, data, monitors and progress, stepped by :meth:`run`."""

    def __init__(self, job: WorkerJob) -> None:
        self.entered = time.time()
        _quiet_ray_reports()  # Ray logs every report at INFO; our own line per epoch says what matters
        self.job, self.cfg = job, job.config
        cfg = self.cfg
        self.manifest = job.manifest
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.cuda = self.device.type == "cuda"
        torch.set_num_threads(
            training_threads(cfg.ray.cpus_per_worker, cfg.train.loader_workers, accelerator=self.cuda)
        )
        if self.cuda:
            torch.cuda.set_device(self.device)  # NCCL's object collectives (monitor, data cursor) use the current GPU
        self.plan: StepPlan = job.plan
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        method = build_method(cfg).to(self.device)
        if cfg.train.channels_last:
            method = method.to(memory_format=torch.channels_last)
        self.method = method
        self.optimizer = build_optimizer(method, cfg.train)

    def run(self) -> dict[str, Any]:
        self.state = self.restore()
        here = ray.get_runtime_context()
        self.state.workers = _gather(
            {"rank": self.rank, "node_id": here.get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}
        )
        self.prepare_model()
        self.batches = self.open_stream()
        self.monitor, self.retrieval = self.open_monitors()
        self.reporter = self.open_reporter()
        system = _SystemMetrics(self.job.progress_queue, self.job.system_metrics_s) if self.reporter else None
        with system or contextlib.nullcontext():
            self._start_epoch_clock()
            while self.state.step < self.plan.total_steps:
                last_batch = self.train_to_next_stop()
                metrics: dict[str, float] = {
                    "step": float(self.state.step),
                    "epoch": self.state.step / self.plan.steps_per_epoch,
                    "corrupt_samples": float(self.state.corrupt_samples),
                }
                # a budget's re-plan can end the run within an epoch: the partial epoch closes like a full one
                epoch_done = (
                    self.state.step % self.plan.steps_per_epoch == 0 or self.state.step == self.plan.total_steps
                )
                warning, collapsed, is_best = None, False, False
                if epoch_done:
                    warning, collapsed, is_best = self.close_epoch(metrics, last_batch)
                self.checkpoint(metrics, is_best)
                if epoch_done:
                    self.log_epoch(metrics, warning, collapsed)
                    self._start_epoch_clock()
                    if self.state.stopped:
                        if self.rank == 0:
                            print(f"STOPPED {self.state.stopped}", flush=True)
                        break
        return {"history": self.state.history, "steps": self.state.step}

    def restore(self) -> TrainState:
        """The newest complete checkpoint in storage wins over the one Ray registered: it may be newer
        (uploaded just before a worker or the driver died), and Ray's may be incomplete (a cut upload)."""
        state = TrainState()
        checkpoint = ray.train.get_checkpoint()
        newest = _newest_in_storage(self.job, self.rank)
        if newest:
            checkpoint = None
            with local_folder(newest, self.cfg.storage) as d:
                state = load_state(d, self.method, self.optimizer)
        elif checkpoint is not None:
            with checkpoint.as_directory() as d:
                state = load_state(Path(d), self.method, self.optimizer)
        if state.planned_steps:  # a time-budgeted run keeps the step count it re-planned to
            self.plan = replan_steps(self.job.plan, self.cfg.train, state.planned_steps)
        if checkpoint is not None or newest:
            state.resumed_from.append(state.step)
            if self.rank == 0:
                print(f"resuming from step {state.step} (epoch {state.epoch}) of {self.plan.total_steps}", flush=True)
        return state

    def prepare_model(self) -> None:
        """DDP around the method. The methods keep their own buffers identical across ranks (gathered
        queues, all-reduced centers), so DDP need not overwrite them with rank 0's before every forward."""
        model = ray.train.torch.prepare_model(self.method, parallel_strategy_kwargs={"forward_sync_buffers": False})
        if self.cfg.train.compile:
            model = torch.compile(model)
        self.model = model
        self.api = as_method(model)

    def open_stream(self) -> Iterator[list[Tensor]]:
        """This rank's batches from the step the state is at (each rank has taken one batch per step)."""
        cfg = self.cfg
        per_rank = cfg.train.batch_size // self.world
        transform = self.api.view_transform(cfg.augment, cfg.model.image_size)
        on_device = None
        if cfg.augment.on_device:  # loader processes only decode; the views are made batched on the device
            on_device = device_views(transform)
            transform = MultiView(decode_for_device(on_device.max_size), 1)
        stream = TrainStream(
            shard_urls(self.manifest, self.job.shard_folder, "train"),
            transform,
            rank=self.rank,
            world_size=self.world,
            seed=cfg.train.seed,
            storage=cfg.storage,
            sizes=[s.samples for s in self.manifest.split("train").shards],
            start_batch=self.state.step,
            batch_size=per_rank,
        )
        loader = train_loader(stream, cfg.train, per_rank, pin_memory=self.cuda and cfg.train.pin_memory)
        self.state.startup = {"loop_entered_at": self.entered}
        self.counted = CountedBatches(iter(loader), self.state, cfg.train.max_corrupt_samples)
        if on_device is None:
            return self.counted
        return AugmentedBatches(self.counted, on_device, self.device, seed=cfg.train.seed, rank=self.rank,
                                start=self.state.step)  # fmt: skip

    def open_monitors(self) -> tuple[KnnMonitor | None, RetrievalMonitor | None]:
        """The kNN monitor on a labelled sample, or without labels the label-free retrieval curve."""
        cfg, samples = self.cfg, self.cfg.train.knn_monitor_samples
        if not samples:
            return None, None
        monitor = KnnMonitor.from_shards(
            cfg, self.manifest, self.job.shard_folder, samples, cfg.storage, rank=self.rank, world=self.world
        )
        retrieval = None
        if monitor is None and self.rank == 0:
            retrieval = RetrievalMonitor.from_shards(cfg, self.manifest, self.job.shard_folder, max(2, samples // 2),
                                                     cfg.storage)  # fmt: skip
        return monitor, retrieval

    def open_reporter(self) -> _ProgressReporter | None:
        if self.rank != 0 or self.job.progress_queue is None:
            return None
        return _ProgressReporter(
            self.job.progress_queue, self.plan.total_steps, self.cfg.train.batch_size, self.cfg.train.log_every_steps,
            lambda: self.counted.wait_s,
        )  # fmt: skip

    def _start_epoch_clock(self) -> None:
        self.epoch_wall, self.compute_s, self.epoch_first_step = time.perf_counter(), 0.0, self.state.step
        self.waited_at = self.counted.wait_s

    def train_to_next_stop(self) -> list[Tensor]:
        """Optimizer steps up to the next checkpoint (``train.checkpoint_every_steps``) or epoch end;
        returns the last batch (the health metrics' input)."""
        cfg, start = self.cfg, time.perf_counter()
        last_batch = run_steps(
            self.model,
            self.batches,
            self.optimizer,
            self.plan,
            self.state,
            stop=_next_stop(self.state.step, self.plan, cfg.train.checkpoint_every_steps),
            device=self.device,
            amp=amp_enabled(cfg.train, self.device),
            seed=cfg.train.seed,
            rank=self.rank,
            channels_last=cfg.train.channels_last,
            on_step=self.reporter,
        )
        self.compute_s += time.perf_counter() - start
        self.state.startup.setdefault("first_batch_at", self.counted.first_batch_at or time.time())
        self.counted.settle()
        return last_batch

    def close_epoch(self, metrics: dict[str, float], last_batch: list[Tensor]) -> tuple[str | None, bool, bool]:
        """Add the epoch's metrics (the same numbers on every rank) to ``metrics`` and the history;
        returns the collapse warning, whether it stops the run, and whether this epoch is the best."""
        cfg, state, plan = self.cfg, self.state, self.plan
        epoch_steps = state.step - self.epoch_first_step  # this attempt's steps, if it resumed mid-epoch
        means = pop_means(state)
        health = backbone_health(self.api.backbone, last_batch[0].to(self.device))  # label-free collapse guard
        waited = {"data_wait_fraction": min((self.counted.wait_s - self.waited_at) / max(self.compute_s, 1e-9), 1.0)}
        means = distributed.mean_over_ranks(means | health | waited)
        warning = collapse_warning(means)
        state.collapse_streak = state.collapse_streak + 1 if warning is not None else 0
        state.epoch = state.step // plan.steps_per_epoch
        metrics |= {
            **means,
            "epoch": state.step / plan.steps_per_epoch,
            "collapse_warning": float(warning is not None),
            "images_per_s": epoch_steps * cfg.train.batch_size / max(self.compute_s, 1e-9),
        }
        if self.monitor is not None:
            metrics["knn_top1"] = self.monitor(self.api.backbone, self.device)
        if self.retrieval is not None:
            metrics["retrieval_top1"] = self.retrieval(self.api.backbone, self.device)
        metrics["epoch_time_s"] = time.perf_counter() - self.epoch_wall
        is_best = cfg.train.keep_best and self.rank == 0 and _improves(state, metrics)
        collapsed = warning is not None and state.collapse_streak >= cfg.train.collapse_patience
        if collapsed and cfg.train.on_collapse == "stop":
            state.stopped = (
                f"training stopped at epoch {state.epoch} (step {state.step} of {plan.total_steps}): "
                f"{warning}, for {state.collapse_streak} epochs in a row (train.on_collapse=stop, "
                f"train.collapse_patience={cfg.train.collapse_patience})"
            )
        state.history.append(metrics)
        if cfg.train.time_budget_s and state.step < plan.total_steps:
            self.replan(epoch_steps, metrics["epoch_time_s"])
        return warning, collapsed, is_best

    def replan(self, epoch_steps: int, epoch_time_s: float) -> None:
        """``train.time_budget_s``: fit the remaining steps to the budget at the last epoch's pace."""
        cfg, state = self.cfg, self.state
        spent = sum(h.get("epoch_time_s", 0.0) for h in state.history)
        pace = epoch_steps / max(epoch_time_s, 1e-9)
        planned = _steps_in_budget(cfg, spent, pace, state.step, self.plan)
        if planned == state.planned_steps:
            return
        first = state.planned_steps is None
        state.planned_steps = planned
        self.plan = replan_steps(self.job.plan, cfg.train, planned)
        if self.reporter is not None:
            self.reporter.total = self.plan.total_steps
        if self.rank == 0:
            print(
                f"time budget {cfg.train.time_budget_s:.0f} s, {spent:.0f} s spent, "
                f"{epoch_time_s:.1f} s per epoch: {self.plan.total_steps} steps "
                f"({self.plan.total_steps / self.plan.steps_per_epoch:.2f} of {cfg.train.epochs} epochs), "
                f"schedules {'re-planned to fit' if first else 'adjusted to the pace'}",
                flush=True,
            )

    def checkpoint(self, metrics: dict[str, float], is_best: bool) -> None:
        """Rank 0 writes the checkpoint; every rank reports. Rank 0 then checks the upload is complete
        and, with ``train.keep_best``, copies the best epoch's checkpoint aside."""
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if self.rank == 0:
                save_state(Path(tmp), self.method, self.optimizer, self.state)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"step-{self.state.step:08d}")
            if self.rank == 0:
                check_uploaded(self.job.run_url, self.cfg.storage, self.state.step)
                if is_best:
                    upload_best(self.job.run_url, self.cfg.storage, Path(tmp), self.state.step)

    def log_epoch(self, metrics: dict[str, float], warning: str | None, collapsed: bool) -> None:
        """Rank 0: one line per epoch, and the epoch's metrics (and a collapse alert) to the driver."""
        if self.rank != 0:
            return
        knn = f"  kNN {metrics['knn_top1']:.3f}" if "knn_top1" in metrics else ""
        print(
            f"epoch {metrics['epoch']:.4g}/{self.plan.total_steps / self.plan.steps_per_epoch:.4g}  "
            f"step {self.state.step}/{self.plan.total_steps}  loss {metrics['loss']:.4f}{knn}  "
            f"{metrics['images_per_s']:.0f} img/s  "
            f"lr {metrics['lr']:.2e}  effective rank {metrics['health_effective_rank']:.1f}  "
            f"data wait {metrics['data_wait_fraction']:.0%}",
            flush=True,
        )
        if metrics["collapse_warning"]:
            print(f"WARNING epoch {self.state.epoch}: {warning}", flush=True)
        queue = self.job.progress_queue
        if queue is not None:
            send(queue, {"kind": "epoch", "step": self.state.step, "metrics": metrics}, block=True)
            if collapsed:
                alert = {"kind": "collapse", "step": self.state.step, "epoch": self.state.epoch, "message": warning,
                         "streak": self.state.collapse_streak, "action": self.cfg.train.on_collapse}  # fmt: skip
                send(queue, alert, block=True)


def _gather(info: dict[str, Any]) -> list[dict[str, Any]]:
    if not (dist.is_available() and dist.is_initialized()):
        return [info]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, info)
    return out


def _steps_in_budget(cfg: PipelineConfig, spent_s: float, pace: float, step: int, plan: StepPlan) -> int:
    """How many steps in all fit ``train.time_budget_s``: ``spent_s`` seconds of it are spent (the
    finished epochs, the work between them included) and ``step`` steps done, and the rest goes at
    ``pace`` steps per second (the last epoch's). At least the steps done, at most ``train.epochs``
    epochs; the last epoch may be partial. Made after every epoch, so that a pace that changes
    (a loaded machine, a slower later epoch) does not overrun the budget. Rank 0 decides, so that
    every rank runs the same plan."""
    budget = cfg.train.time_budget_s or 0.0
    more = int(max(budget - spent_s, 0.0) * pace)
    total = [max(step, min(cfg.train.epochs * plan.steps_per_epoch, step + more))]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(total, src=0)
    return int(total[0])


def _next_stop(step: int, plan: StepPlan, every: int | None) -> int:
    """The next step at which to checkpoint: the epoch's end, or sooner every ``every`` steps."""
    stop = (step // plan.steps_per_epoch + 1) * plan.steps_per_epoch
    if every is not None:
        stop = min(stop, (step // every + 1) * every)
    return min(stop, plan.total_steps)


def _improves(state: TrainState, metrics: dict[str, float]) -> bool:
    """``train.keep_best``: does this epoch's monitor score (kNN, else label-free retrieval) beat
    the best so far? Updates the state's record of the best when it does."""
    name = "knn_top1" if "knn_top1" in metrics else "retrieval_top1" if "retrieval_top1" in metrics else None
    if name is None:
        return False
    score = metrics[name]
    if state.best_score is not None and state.best_metric == name and score <= state.best_score:
        return False
    state.best_metric, state.best_score, state.best_step = name, score, state.step
    return True


def _quiet_ray_reports() -> None:
    try:  # Ray's logger there is named after its file, so only the module's own object reaches it
        from ray.train.v2._internal.execution import context

        context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):
        pass


def _newest_in_storage(job: WorkerJob, rank: int) -> str | None:
    """The newest complete checkpoint in storage, found by rank 0 and shared with every rank.

    Ray hands a restarted worker group the newest checkpoint its controller registered; one that a
    worker uploaded just before it (or the driver) died may be newer and is found only here.
    """
    found: list[Any] = [None]
    if rank == 0:
        newest = latest_checkpoint(job.storage_path, job.run_name, job.config.storage)
        found = [newest[0] if newest is not None else None]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(found, src=0)
    return found[0]


class _ProgressReporter:
    """Rank 0's progress into a Ray queue the driver reads: a progress line at most every
    ``interval_s``, and every ``log_every`` steps the step metrics for MLflow (loss, lr, images/s
    and the share of the time spent waiting for data since the last ones)."""

    def __init__(
        self, queue: Any, total: int, batch_size: int, log_every: int, wait_s: Callable[[], float],
        interval_s: float = 2.0,
    ) -> None:  # fmt: skip
        self.queue, self.total, self.interval_s = queue, total, interval_s
        self.batch_size, self.log_every, self.wait_s = batch_size, log_every, wait_s
        self.last = 0.0
        self.origin: tuple[int, float] | None = None  # (step, time) of this attempt's first step
        self.window: tuple[int, float, float] | None = None  # (step, time, data wait) at the last step metrics

    def __call__(self, state: TrainState, out: dict[str, float]) -> None:
        now = time.perf_counter()
        if self.origin is None:
            self.origin = (state.step, now)
            self.window = (state.step, now, self.wait_s())
        if state.step % self.log_every == 0 and self.window is not None:
            metrics = {"loss": out.get("loss", float("nan")), "lr": out.get("lr", float("nan"))}
            steps, elapsed, waited = state.step - self.window[0], now - self.window[1], self.wait_s() - self.window[2]
            if steps > 0 and elapsed > 0:
                metrics |= {
                    "images_per_s": steps * self.batch_size / elapsed,
                    "data_wait_fraction": min(max(waited / elapsed, 0.0), 1.0),
                }
            self.window = (state.step, now, self.wait_s())
            send(self.queue, {"kind": "step", "step": state.step, "metrics": metrics}, block=False)
        if now - self.last < self.interval_s and state.step < self.total:
            return
        self.last = now
        done, elapsed = state.step - self.origin[0], now - self.origin[1]
        message = {"step": state.step, "total": self.total, "loss": out.get("loss", float("nan"))}
        message["steps_per_s"] = done / elapsed if done > 0 and elapsed > 0 else 0.0
        send(self.queue, message, block=False)


def send(queue: Any, message: dict[str, Any], *, block: bool) -> None:
    """Put ``message`` in the driver's queue: progress is best effort (``block=False`` drops it when
    the queue is full), epoch metrics and alerts wait up to 10 s. Training never fails on it."""
    with contextlib.suppress(Exception):
        if block:
            queue.put(message, timeout=10)
        else:
            queue.put_nowait(message)


class _SystemMetrics:
    """Rank 0's machine, sampled with MLflow's own system-metrics monitors (CPU, memory, disk,
    network, NVIDIA GPU utilisation and memory through NVML) and sent to the driver, which logs them
    as ``system/...`` metrics of the run: the training side's numbers, on a cluster too."""

    def __init__(self, queue: Any, interval_s: float) -> None:
        self.queue, self.interval_s = queue, interval_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sslpipe-system-metrics", daemon=True)

    def __enter__(self) -> _SystemMetrics:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=5)

    def _monitors(self) -> list[Any]:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

        monitors: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        try:
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

            monitors.append(GPUMonitor())
        except Exception:  # no NVML (no NVIDIA GPU or driver): CPU-side metrics only
            pass
        return monitors

    def _run(self) -> None:
        try:
            monitors = self._monitors()
        except Exception as exc:
            logging.getLogger(__name__).warning("system metrics are off: %s", exc)
            return
        while not self.done.wait(self.interval_s):
            metrics: dict[str, float] = {}
            for monitor in monitors:
                with contextlib.suppress(Exception):
                    monitor.collect_metrics()
                    metrics |= monitor.aggregate_metrics()
                    monitor.clear_metrics()
            if metrics:
                send(self.queue, {"kind": "system", "time": time.time(), "metrics": metrics}, block=False)
