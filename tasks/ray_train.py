"""Ray Train adapter, the driver side: connects to Ray, runs ``sslcore`` training under
``TorchTrainer`` (DDP: gloo on CPU, nccl on GPU), restarts a group whose worker died while starting,
and turns a failed run into a message naming its newest checkpoint. What each worker runs is
``tasks/train_worker.py``; the checkpoint folders both sides read are ``tasks/checkpoints.py``.
Kept free of Prefect so that Ray workers import only what they need."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import ray.train
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

from sslcore.config import PipelineConfig, StorageConfig
from sslcore.preflight import PreflightError
from sslcore.storage import filesystem, is_remote
from sslcore.train import TrainState, read_meta, replan_steps
from tasks import ray_groups
from tasks.checkpoints import best_checkpoint, latest_checkpoint, prune_unregistered
from tasks.train_worker import WorkerJob, train_loop_per_worker


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


def fit(job: WorkerJob, progress: Callable[[dict[str, float]], None] | None = None) -> TrainOutcome:
    """Run (or resume: same ``job.storage_path`` and ``job.run_name``) the distributed training
    that ``job`` planned (:meth:`WorkerJob.planned`).

    A run whose newest checkpoint already holds every planned step is not started again: its
    outcome is returned as it is. The job, config included, travels to the workers as the typed
    object itself (not JSON), so storage secrets arrive intact while every ``repr`` and dump still
    masks them. ``progress`` receives, from a driver thread, ``{step, total, loss, steps_per_s}``
    every few seconds while it trains, and messages with a ``kind``: ``step`` (every
    ``train.log_every_steps`` steps), ``epoch`` (every epoch's metrics), ``system`` (rank 0's
    machine) and ``collapse``.
    """
    cfg, storage_path, run_name, plan = job.config, job.storage_path, job.run_name, job.plan
    found = latest_checkpoint(storage_path, run_name, cfg.storage)
    if found is not None and found[1].planned_steps:
        plan = replan_steps(plan, cfg.train, found[1].planned_steps)
    if found is not None and (found[1].step >= plan.total_steps or found[1].stopped):
        print(f"{run_name} already finished ({found[1].step} steps): reusing {found[0]}", flush=True)
        best = best_checkpoint(storage_path, run_name, cfg.storage) if cfg.train.keep_best else None
        return TrainOutcome(run_name, storage_path, found[0], found[1], best)
    restarts = 0
    with _progress_queue(progress) as queue:
        while True:
            try:
                with ray_groups.LeakWatch():
                    result = _fit(job, queue)
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


def _fit(job: WorkerJob, queue: Any) -> Any:
    cfg = job.config
    path, fs = ray_storage(job.storage_path, cfg.storage)
    # Read by Ray Train's controller, which the trainer starts with the driver's RAY_TRAIN_* variables.
    os.environ[POLL_INTERVAL_ENV] = str(cfg.ray.poll_interval_s)
    job = job.with_progress(queue, float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", 10)))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker, **({"GPU": 1} if cfg.ray.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=job.run_name,
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # our one line per epoch instead
        ),
    )
    return trainer.fit()
