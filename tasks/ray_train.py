"""Ray Train adapter: runs ``sslcore`` training under ``TorchTrainer`` (DDP: gloo on CPU, nccl on
GPU). Kept free of Prefect so that Ray workers import only what they need."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import posixpath
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.exceptions import RayActorError
from ray.train import (
    CheckpointConfig,
    ControllerError,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)
from ray.train.torch import TorchConfig, TorchTrainer
from torch import Tensor

from sslcore import distributed
from sslcore.config import PipelineConfig, StorageConfig
from sslcore.data.manifest import read_manifest
from sslcore.data.stream import CountedBatches, TrainStream, shard_urls, train_loader
from sslcore.device_augment import AugmentedBatches, decode_for_device, device_views
from sslcore.health import backbone_health, collapse_warning
from sslcore.methods import as_method, build_method
from sslcore.monitor import KnnMonitor, RetrievalMonitor
from sslcore.preflight import PreflightError
from sslcore.resources import training_threads
from sslcore.schedules import StepPlan
from sslcore.storage import filesystem, is_remote, join, local_folder, storage_errors
from sslcore.train import (
    META_FILE,
    STATE_FILE,
    TrainState,
    amp_enabled,
    build_optimizer,
    checkpoint_state,
    load_state,
    plan_steps,
    pop_means,
    read_meta,
    run_steps,
    save_state,
)
from sslcore.transforms import MultiView
from tasks import ray_groups


def _gather(info: dict[str, Any]) -> list[dict[str, Any]]:
    if not (dist.is_available() and dist.is_initialized()):
        return [info]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, info)
    return out


def _step_of(checkpoint_path: str) -> int:
    match = re.search(r"step-(\d+)/?$", checkpoint_path)
    return int(match.group(1)) if match else -1


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


def _quiet_ray_reports() -> None:
    try:  # Ray's logger there is named after its file, so only the module's own object reaches it
        from ray.train.v2._internal.execution import context

        context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):
        pass


def _newest_in_storage(loop_config: dict[str, Any], cfg: PipelineConfig, rank: int) -> str | None:
    """The newest complete checkpoint in storage, found by rank 0 and shared with every rank.

    Ray hands a restarted worker group the newest checkpoint its controller registered; one that a
    worker uploaded just before it (or the driver) died may be newer and is found only here.
    """
    found: list[Any] = [None]
    if rank == 0:
        newest = latest_checkpoint(loop_config["storage_path"], loop_config["run_name"], cfg.storage)
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


def _upload_best(loop_config: dict[str, Any], cfg: PipelineConfig, local: Path, step: int) -> None:
    """Rank 0: copy the checkpoint just written to ``local`` to ``<run>/best-step-N`` (tensors
    first, progress last, so that a cut copy reads as incomplete) and drop the older best ones."""
    url = join(loop_config["storage_path"], loop_config["run_name"], f"best-step-{step:08d}")
    fs, folder = filesystem(url, cfg.storage)
    with storage_errors(url, cfg.storage, "saving the best checkpoint to"):
        fs.makedirs(folder, exist_ok=True)
        for name in (STATE_FILE, META_FILE):
            fs.put_file(str(local / name), f"{folder}/{name}")
        parent = folder.rsplit("/", 1)[0]
        for old in fs.glob(f"{parent}/best-step-*"):
            if old.rstrip("/") != folder.rstrip("/"):
                fs.rm(old, recursive=True)


def best_checkpoint(storage_path: str, run_name: str, storage: StorageConfig) -> str | None:
    """The complete ``best-step-N`` folder of a run (``train.keep_best``), newest first, if any."""
    found = latest_checkpoint(storage_path, run_name, storage, prefix="best-step")
    return found[0] if found is not None else None


def _next_stop(step: int, plan: StepPlan, every: int | None) -> int:
    """The next step at which to checkpoint: the epoch's end, or sooner every ``every`` steps."""
    stop = (step // plan.steps_per_epoch + 1) * plan.steps_per_epoch
    if every is not None:
        stop = min(stop, (step // every + 1) * every)
    return min(stop, plan.total_steps)


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Runs on every Ray Train worker."""
    entered = time.time()
    # Ray logs every report at INFO; our own line per epoch says what matters.
    _quiet_ray_reports()
    cfg: PipelineConfig = loop_config["config"]
    folder = loop_config["shard_folder"]
    manifest = read_manifest(folder, cfg.storage)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cuda = device.type == "cuda"
    torch.set_num_threads(training_threads(cfg.ray.cpus_per_worker, cfg.train.loader_workers, accelerator=cuda))
    if cuda:
        torch.cuda.set_device(device)  # NCCL's object collectives (monitor, data cursor) use the current GPU

    plan = plan_steps(cfg, manifest.split("train").samples)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    method = build_method(cfg).to(device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method, cfg.train)
    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    # The newest complete checkpoint in storage wins over the one Ray registered: it may be newer
    # (uploaded just before a worker or the driver died), and Ray's may be incomplete (a cut upload).
    newest = _newest_in_storage(loop_config, cfg, rank)
    if newest:
        checkpoint = None
        with local_folder(newest, cfg.storage) as d:
            state = load_state(d, method, optimizer)
    elif checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_state(Path(d), method, optimizer)
    if checkpoint is not None or newest:
        state.resumed_from.append(state.step)
        if rank == 0:
            print(f"resuming from step {state.step} (epoch {state.epoch}) of {plan.total_steps}", flush=True)
    here = ray.get_runtime_context()
    state.workers = _gather(
        {"rank": rank, "node_id": here.get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}
    )
    # The methods keep their own buffers identical across ranks (gathered queues, all-reduced
    # centers), so DDP need not overwrite them with rank 0's before every forward.
    model = ray.train.torch.prepare_model(method, parallel_strategy_kwargs={"forward_sync_buffers": False})
    if cfg.train.compile:
        model = torch.compile(model)
    api = as_method(model)

    per_rank = cfg.train.batch_size // world
    urls = shard_urls(manifest, folder, "train")
    transform = api.view_transform(cfg.augment, cfg.model.image_size)
    on_device = None
    if cfg.augment.on_device:  # loader processes only decode; the views are made batched on `device`
        on_device = device_views(transform)
        transform = MultiView(decode_for_device(on_device.max_size), 1)
    stream = TrainStream(
        urls,
        transform,
        rank=rank,
        world_size=world,
        seed=cfg.train.seed,
        storage=cfg.storage,
        sizes=[s.samples for s in manifest.split("train").shards],
        start_batch=state.step,  # the data position: each rank has taken one batch per step
        batch_size=per_rank,
    )
    loader = train_loader(stream, cfg.train, per_rank, pin_memory=cuda and cfg.train.pin_memory)
    state.startup = {"loop_entered_at": entered}
    counted = CountedBatches(iter(loader), state, cfg.train.max_corrupt_samples)
    batches: Iterator[list[Tensor]] = counted
    if on_device is not None:
        batches = AugmentedBatches(counted, on_device, device, seed=cfg.train.seed, rank=rank, start=state.step)
    samples = manifest.split("train").samples
    if state.planned_steps:
        plan = plan_steps(cfg, samples, total_steps=state.planned_steps)
    monitor, retrieval = None, None
    if cfg.train.knn_monitor_samples:
        samples_ = cfg.train.knn_monitor_samples
        monitor = KnnMonitor.from_shards(cfg, manifest, folder, samples_, cfg.storage, rank=rank, world=world)
        if monitor is None and rank == 0:  # no labels: the label-free curve instead
            retrieval = RetrievalMonitor.from_shards(cfg, manifest, folder, max(2, samples_ // 2), cfg.storage)
    queue = loop_config.get("progress_queue")
    reporter = None
    if rank == 0 and queue is not None:
        reporter = _ProgressReporter(
            queue, plan.total_steps, cfg.train.batch_size, cfg.train.log_every_steps, lambda: counted.wait_s
        )
    system = _SystemMetrics(queue, loop_config.get("system_metrics_s", 10.0)) if reporter is not None else None
    with system or contextlib.nullcontext():
        every = cfg.train.checkpoint_every_steps
        waited_at = counted.wait_s
        epoch_wall, compute_s, epoch_first_step = time.perf_counter(), 0.0, state.step
        while state.step < plan.total_steps:
            start, is_best = time.perf_counter(), False
            last_batch = run_steps(
                model,
                batches,
                optimizer,
                plan,
                state,
                stop=_next_stop(state.step, plan, every),
                device=device,
                amp=amp_enabled(cfg.train, device),
                seed=cfg.train.seed,
                rank=rank,
                channels_last=cfg.train.channels_last,
                on_step=reporter,
            )
            compute_s += time.perf_counter() - start
            state.startup.setdefault("first_batch_at", counted.first_batch_at or time.time())
            counted.settle()
            metrics: dict[str, float] = {
                "step": float(state.step),
                "epoch": state.step / plan.steps_per_epoch,
                "corrupt_samples": float(state.corrupt_samples),
            }
            epoch_done = state.step % plan.steps_per_epoch == 0 or state.step == plan.total_steps  # a budget's
            # re-plan can end the run within an epoch: the partial epoch closes like a full one
            if epoch_done:
                epoch_steps = state.step - epoch_first_step  # this attempt's steps, if it resumed mid-epoch
                means = pop_means(state)
                health = backbone_health(api.backbone, last_batch[0].to(device))  # label-free collapse guard
                waited = {"data_wait_fraction": min((counted.wait_s - waited_at) / max(compute_s, 1e-9), 1.0)}
                means = distributed.mean_over_ranks(means | health | waited)  # the same numbers on every rank
                warning = collapse_warning(means)
                state.collapse_streak = state.collapse_streak + 1 if warning is not None else 0
                state.epoch = state.step // plan.steps_per_epoch
                metrics |= {
                    **means,
                    "epoch": state.step / plan.steps_per_epoch,
                    "collapse_warning": float(warning is not None),
                    "images_per_s": epoch_steps * cfg.train.batch_size / max(compute_s, 1e-9),
                }
                if monitor is not None:
                    metrics["knn_top1"] = monitor(api.backbone, device)
                if retrieval is not None:
                    metrics["retrieval_top1"] = retrieval(api.backbone, device)
                metrics["epoch_time_s"] = time.perf_counter() - epoch_wall
                is_best = cfg.train.keep_best and rank == 0 and _improves(state, metrics)
                collapsed = warning is not None and state.collapse_streak >= cfg.train.collapse_patience
                if collapsed and cfg.train.on_collapse == "stop":
                    state.stopped = (
                        f"training stopped at epoch {state.epoch} (step {state.step} of {plan.total_steps}): "
                        f"{warning}, for {state.collapse_streak} epochs in a row (train.on_collapse=stop, "
                        f"train.collapse_patience={cfg.train.collapse_patience})"
                    )
                state.history.append(metrics)
                if cfg.train.time_budget_s and state.step < plan.total_steps:
                    spent = sum(h.get("epoch_time_s", 0.0) for h in state.history)
                    pace = epoch_steps / max(metrics["epoch_time_s"], 1e-9)
                    planned = _steps_in_budget(cfg, spent, pace, state.step, plan)
                    if planned != state.planned_steps:
                        first = state.planned_steps is None
                        state.planned_steps = planned
                        plan = plan_steps(cfg, samples, total_steps=planned)
                        if reporter is not None:
                            reporter.total = plan.total_steps
                        if rank == 0:
                            print(
                                f"time budget {cfg.train.time_budget_s:.0f} s, {spent:.0f} s spent, "
                                f"{metrics['epoch_time_s']:.1f} s per epoch: {plan.total_steps} steps "
                                f"({plan.total_steps / plan.steps_per_epoch:.2f} of {cfg.train.epochs} epochs), "
                                f"schedules {'re-planned to fit' if first else 'adjusted to the pace'}",
                                flush=True,
                            )
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:  # only rank 0 writes; every rank reports
                    save_state(Path(tmp), model, optimizer, state)
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"step-{state.step:08d}")
                if rank == 0:
                    _check_uploaded(loop_config, cfg, state.step)
                    if is_best:
                        _upload_best(loop_config, cfg, Path(tmp), state.step)
            if epoch_done:
                if rank == 0:
                    knn = f"  kNN {metrics['knn_top1']:.3f}" if "knn_top1" in metrics else ""
                    print(
                        f"epoch {metrics['epoch']:.4g}/{plan.total_steps / plan.steps_per_epoch:.4g}  "
                        f"step {state.step}/{plan.total_steps}  loss {metrics['loss']:.4f}{knn}  "
                        f"{metrics['images_per_s']:.0f} img/s  "
                        f"lr {metrics['lr']:.2e}  effective rank {metrics['health_effective_rank']:.1f}  "
                        f"data wait {metrics['data_wait_fraction']:.0%}",
                        flush=True,
                    )
                    if metrics["collapse_warning"]:
                        print(f"WARNING epoch {state.epoch}: {collapse_warning(metrics)}", flush=True)
                    if queue is not None:
                        send(queue, {"kind": "epoch", "step": state.step, "metrics": metrics}, block=True)
                        if collapsed:
                            alert = {"kind": "collapse", "step": state.step, "epoch": state.epoch, "message": warning,
                                     "streak": state.collapse_streak, "action": cfg.train.on_collapse}  # fmt: skip
                            send(queue, alert, block=True)
                epoch_wall, compute_s, epoch_first_step = time.perf_counter(), 0.0, state.step
                waited_at = counted.wait_s
                if state.stopped:
                    if rank == 0:
                        print(f"STOPPED {state.stopped}", flush=True)
                    break

    return {"history": state.history, "steps": state.step}


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


@dataclass(frozen=True)
class TrainOutcome:
    run_name: str
    storage_path: str
    checkpoint_path: str  # the last checkpoint: a local path or an s3:// URL
    state: TrainState  # state.stopped says why a run ended before its plan
    best_checkpoint_path: str | None = None  # train.keep_best: the best monitor score's checkpoint

    @property
    def history(self) -> list[dict[str, float]]:
        return self.state.history

    @property
    def steps(self) -> int:
        return self.state.step


POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def ray_runtime_env(*, local: bool) -> dict[str, Any]:
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        # Ray Train tees print() into its logger as well, which shows every line twice; keep plain print.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    }
    if local:
        # Ray Train's controller starts a PreemptionWatcher actor (one more process) to watch for
        # nodes being drained, as spot instances are; a local Ray has no such nodes.
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    return {"env_vars": env}


def _start_autoscaling_coordinator() -> None:
    """Start the actor Ray Train's controller registers its resource request with, now.

    The controller creates it on first use and waits at most 5 s for the answer; on a busy machine
    the new process is not up by then, so every run waited those 5 s and logged a GetTimeoutError
    ("Failed to send resource request"). Started here, it comes up while the trainer is built.
    Ray-internal API: if it moves, the controller starts the actor itself, as before.
    """
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        get_or_create_autoscaling_coordinator()
    except Exception as exc:  # an optimisation only
        logging.getLogger(__name__).debug("could not start Ray's autoscaling coordinator early: %s", exc)


def connect(address: str | None) -> None:
    """Start a local Ray, or join the cluster at ``address`` / ``$RAY_ADDRESS``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target:
        ray.init(address=target, runtime_env=ray_runtime_env(local=False), log_to_driver=True)
    else:
        # The dashboard serves the state API that Ray Train's controller polls; loopback only.
        ray.init(
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",  # a local Ray keeps all its traffic on loopback
            runtime_env=ray_runtime_env(local=True),
            log_to_driver=True,
        )
    _start_autoscaling_coordinator()


def ray_storage(storage_path: str, storage: StorageConfig) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Ray's ``(storage_path, storage_filesystem)`` for a local folder or an ``s3://`` URL.

    S3 goes through the same s3fs settings as the shards (endpoint, profile, credentials), wrapped
    for pyarrow, so that an S3-compatible endpoint (MinIO, moto) works for checkpoints as well.
    """
    if not is_remote(storage_path):
        return str(Path(storage_path).expanduser().resolve()), None
    fs, path = filesystem(storage_path, storage)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _checkpoint_uri(storage_path: str, checkpoint_path: str) -> str:
    if is_remote(storage_path):
        scheme = storage_path.split("://", 1)[0]
        return f"{scheme}://{checkpoint_path.lstrip('/')}"
    return checkpoint_path


@ray.remote(num_cpus=0)
def _read_marker(path: str) -> tuple[str, str | None]:
    try:
        return ray.get_runtime_context().get_node_id(), Path(path).read_text()
    except OSError:
        return ray.get_runtime_context().get_node_id(), None


class StorageNotSharedError(PreflightError):
    """A local path that some node of the Ray cluster cannot see (a configuration error: not retried)."""


def check_shared_paths(paths: dict[str, str]) -> None:
    """On a cluster, every node must see the shards and the checkpoint folder: for each local path,
    write a marker from here and read it back on every alive node. ``s3://`` paths need no check.

    Raises:
        StorageNotSharedError: naming the setting, the path and the nodes that cannot see it.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    for setting, path in paths.items():
        if is_remote(path):
            continue
        folder = Path(path).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / f".sslpipe-visible-{uuid.uuid4().hex}"
        token = uuid.uuid4().hex
        marker.write_text(token)
        try:
            probes = [
                _read_marker.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                ).remote(str(marker))
                for n in nodes
            ]
            blind = [node for node, seen in ray.get(probes, timeout=120) if seen != token]
        finally:
            marker.unlink(missing_ok=True)
        if blind:
            addresses = sorted(n["NodeManagerAddress"] for n in nodes if n["NodeID"] in blind)
            raise StorageNotSharedError(
                f"{setting}={path} is a local path that Ray node(s) {', '.join(addresses)} cannot see: a cluster "
                f"needs storage every node reaches; use an s3:// URL (or a filesystem mounted on every node)"
            )


def latest_checkpoint(
    storage_path: str, run_name: str, storage: StorageConfig, prefix: str = "step"
) -> tuple[str, TrainState] | None:
    """The newest complete checkpoint folder (``<prefix>-N``) of a run in storage (its URL and
    progress), if any.

    Ray resumes from the checkpoints its controller registered; a driver killed between a
    checkpoint's upload and its registration leaves a newer one only this scan finds, and an upload
    cut short leaves a registered one that is incomplete. A folder counts when its progress file
    parses and its tensor file has the recorded size (:func:`sslcore.train.checkpoint_state`). An
    S3 outage raises :class:`~sslcore.storage.StorageError` rather than passing for "no checkpoint".
    """
    run_url = join(storage_path, run_name)
    fs, root = filesystem(run_url, storage)
    with storage_errors(run_url, storage, "looking for checkpoints in"):
        if not fs.exists(root):
            return None
        for folder in sorted(fs.glob(f"{root}/{prefix}-*"), key=_step_of, reverse=True):
            state = checkpoint_state(fs, folder)
            if state is not None:
                return join(run_url, posixpath.basename(folder.rstrip("/"))), state
    return None


def prune_unregistered(storage_path: str, run_name: str, storage: StorageConfig, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoint folders and delete every other one.

    Ray prunes only the checkpoints its controller registered; one uploaded just before its worker
    died stays behind unregistered (and was used to resume), and one whose upload was cut short is
    registered but incomplete. Both are removed here once the run has finished.
    """
    run_url = join(storage_path, run_name)
    fs, root = filesystem(run_url, storage)
    with storage_errors(run_url, storage, "pruning checkpoints in"):
        folders = sorted((f.rstrip("/") for f in fs.glob(f"{root}/step-*")), key=_step_of, reverse=True)
        kept = 0
        for folder in folders:
            if kept < keep and checkpoint_state(fs, folder) is not None:
                kept += 1
            else:
                fs.rm(folder, recursive=True)


def _check_uploaded(loop_config: dict[str, Any], cfg: PipelineConfig, step: int) -> None:
    """Rank 0, after ``ray.train.report``: the checkpoint it just uploaded must be complete in
    storage. pyarrow's ``copy_files`` (which Ray uses) drops errors raised when an upload is
    closed, and s3fs uploads small files on close, so a cut upload can look like a success."""
    url = join(loop_config["storage_path"], loop_config["run_name"], f"step-{step:08d}")
    fs, folder = filesystem(url, cfg.storage)
    with storage_errors(url, cfg.storage, "checking the uploaded checkpoint"):
        complete = checkpoint_state(fs, folder) is not None
    if not complete:
        raise CheckpointUploadError(
            f"the checkpoint upload to {url} is incomplete (the storage failed during it): the worker group "
            f"restarts from the newest complete checkpoint"
        )


class CheckpointUploadError(OSError):
    """A checkpoint reached storage only in part."""


@contextlib.contextmanager
def _progress_queue(progress: Callable[[dict[str, float]], None] | None) -> Iterator[Any]:
    """A Ray queue that rank 0 fills with progress, and a driver thread passing it to ``progress``."""
    if progress is None:
        yield None
        return
    from ray.util.queue import Empty, Queue

    queue = Queue(maxsize=256, actor_options={"num_cpus": 0})
    done = threading.Event()

    def pump() -> None:
        while not done.is_set():
            try:
                message = queue.get(timeout=1.0)
            except Empty:
                continue
            except Exception:  # the queue's actor is gone: nothing more will come
                return
            with contextlib.suppress(Exception):
                progress(message)

    context = contextvars.copy_context()  # the caller's Prefect run context, for its events and artifacts
    thread = threading.Thread(target=context.run, args=(pump,), name="sslpipe-progress", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        done.set()
        thread.join(timeout=5)
        queue.shutdown()


def fit(
    cfg: PipelineConfig,
    shard_folder: str,
    storage_path: str,
    run_name: str,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> TrainOutcome:
    """Run (or resume: same ``storage_path`` and ``run_name``) the distributed training.

    A run whose newest checkpoint already holds every planned step is not started again: its
    outcome is returned as it is. The config travels to the workers as the pydantic object itself
    (not JSON), so storage secrets arrive intact while every ``repr`` and dump still masks them.
    ``progress`` receives, from a driver thread, ``{step, total, loss, steps_per_s}`` every few
    seconds while it trains, and messages with a ``kind``: ``step`` (every ``train.log_every_steps``
    steps), ``epoch`` (every epoch's metrics), ``system`` (rank 0's machine) and ``collapse``.
    """
    plan = plan_steps(cfg, read_manifest(shard_folder, cfg.storage).split("train").samples)
    found = latest_checkpoint(storage_path, run_name, cfg.storage)
    if found is not None and found[1].planned_steps:
        plan = plan_steps(cfg, read_manifest(shard_folder, cfg.storage).split("train").samples, found[1].planned_steps)
    if found is not None and (found[1].step >= plan.total_steps or found[1].stopped):
        print(f"{run_name} already finished ({found[1].step} steps): reusing {found[0]}", flush=True)
        best = best_checkpoint(storage_path, run_name, cfg.storage) if cfg.train.keep_best else None
        return TrainOutcome(run_name, storage_path, found[0], found[1], best)
    restarts = 0
    with _progress_queue(progress) as queue:
        while True:
            try:
                with ray_groups.LeakWatch():
                    result = _fit(cfg, shard_folder, storage_path, run_name, queue)
                break
            except TrainingFailedError as exc:
                released = _release_groups()
                if _worker_lost_at_start(exc) and restarts < cfg.ray.max_failures:
                    restarts += 1
                    print(
                        f"a worker died while its group was starting ({_cause(exc)}), which Ray Train does not "
                        f"count as a worker failure; starting the run again from its newest checkpoint "
                        f"({restarts} of ray.max_failures={cfg.ray.max_failures}"
                        f"{'; released ' + str(len(released)) + ' placement group(s) it left' if released else ''})",
                        flush=True,
                    )
                    continue
                message = _failure_message(cfg, storage_path, run_name, plan.total_steps, exc, restarts)
                raise TrainingRunFailed(message) from exc
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} finished without a checkpoint")
    prune_unregistered(storage_path, run_name, cfg.storage, keep=cfg.ray.checkpoints_to_keep)
    with result.checkpoint.as_directory() as d:
        state = read_meta(Path(d))
    return TrainOutcome(
        run_name=run_name,
        storage_path=storage_path,
        checkpoint_path=_checkpoint_uri(storage_path, result.checkpoint.path),
        state=state,
        best_checkpoint_path=best_checkpoint(storage_path, run_name, cfg.storage) if cfg.train.keep_best else None,
    )


class TrainingRunFailed(RuntimeError):
    """The Ray Train run failed for good (after ``ray.max_failures`` worker-group restarts, or in
    Ray Train's controller); its newest complete checkpoint stays in storage, and running the stage
    again resumes from it."""


def _cause(exc: Exception) -> str:
    """The first line that says what went wrong: Ray's message puts it on the second line."""
    cause = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc).strip())
    inner = getattr(exc, "controller_failure", None)
    return f"{type(inner).__name__ if inner is not None else type(exc).__name__}: {cause[:300]}"


def _worker_lost_at_start(exc: Exception) -> bool:
    """A worker died in a part of the worker group's start that Ray Train handles as an error of its
    controller, not of the group, and so neither retries nor counts against ``max_failures``."""
    return isinstance(exc, ControllerError) and isinstance(exc.controller_failure, RayActorError)


def _release_groups() -> list[str]:
    try:
        return ray_groups.release()
    except Exception as exc:  # the state API is unreachable: the failure itself is the news
        print(f"could not look for placement groups the failed run left: {exc}", flush=True)
        return []


def _failure_message(
    cfg: PipelineConfig, storage_path: str, run_name: str, total: int, exc: Exception, restarts: int = 0
) -> str:
    newest = latest_checkpoint(storage_path, run_name, cfg.storage)
    kept = (
        f"its newest complete checkpoint, {newest[0]} (step {newest[1].step} of {total}), is kept: run the stage "
        f"again (or let Prefect retry it) to resume from there"
        if newest is not None
        else "it wrote no complete checkpoint, so a new attempt starts from step 0"
    )
    if _worker_lost_at_start(exc):
        what = (
            f"failed: its workers died while starting {restarts + 1} times, more than "
            f"ray.max_failures={cfg.ray.max_failures} allows"
        )
    elif isinstance(exc, ControllerError):
        what = "failed in Ray Train's controller"
    else:
        what = f"failed after ray.max_failures={cfg.ray.max_failures} restarts of its worker group"
    return f"training run {run_name} {what} ({_cause(exc)}); {kept}"


def _fit(cfg: PipelineConfig, shard_folder: str, storage_path: str, run_name: str, queue: Any) -> Any:
    path, fs = ray_storage(storage_path, cfg.storage)
    # Read by Ray Train's controller, which the trainer starts with the driver's RAY_TRAIN_* variables.
    os.environ[POLL_INTERVAL_ENV] = str(cfg.ray.poll_interval_s)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg,
            "shard_folder": shard_folder,
            "storage_path": storage_path,
            "run_name": run_name,
            "progress_queue": queue,
            "system_metrics_s": float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", 10)),
        },
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker, **({"GPU": 1} if cfg.ray.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # our one line per epoch instead
        ),
    )
    return trainer.fit()
