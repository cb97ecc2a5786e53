"""Pretrain stage: self-supervised training on the shards with Ray Train."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid

from prefect import runtime, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from sslcore.config import PipelineConfig
from sslcore.health import TrainingCollapsed
from sslcore.preflight import PreflightError, check_local_resources
from tasks import ray_train
from tasks.errors import retry_unless_user_error
from tasks.faults import inject
from tasks.records import IngestRecord, PretrainRecord
from tasks.runtime import ray_storage_path
from tasks.tracking import TRAINING_PARAMS, LiveRun
from tasks.train_worker import WorkerJob


def run_name_for(config: PipelineConfig, ingest: IngestRecord) -> str:
    """Same data and training config -> same Ray Train run, so a retried or re-run stage resumes
    from that run's latest checkpoint instead of starting over."""
    relevant = {
        "data": ingest.fingerprint,
        **config.model_dump(mode="json", include=set(TRAINING_PARAMS)),
        "workers": config.ray.num_workers,
    }
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
    return f"pretrain-{config.method.name}-{digest[:12]}"


@task(
    name="pretrain",
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
    tags=["sslpipe", "pretrain", "ray"],
)
def pretrain(config: PipelineConfig, ingest: IngestRecord, fresh: bool = False) -> PretrainRecord:
    """Train ``config.method`` on the ingested shards; resume the same run if it exists.

    ``fresh`` starts a new Ray Train run instead (``--force pretrain``), named after this task run
    so that the task's own retries still resume it.
    """
    inject("pretrain")
    start, started_at = time.perf_counter(), time.time()
    storage_path = ray_storage_path(config)
    run_name = run_name_for(config, ingest)
    if fresh:
        run_name += f"-{str(runtime.task_run.id or uuid.uuid4().hex)[:8]}"
    # Planned once, before Ray starts: batch vs data size, the method on this backbone. The job is
    # what every worker receives.
    job = WorkerJob.planned(config, ingest.shard_folder, storage_path, run_name)
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if not address:
        check_local_resources(config)
    ray_train.connect(address)
    connected_at = time.time()
    _check_cluster_resources(config)
    if address:
        ray_train.check_shared_paths({"ingest.output": ingest.shard_folder, "ray.storage_path": storage_path})
    progress = TrainingProgress(run_name)
    live = LiveRun.open(config, run_name, ingest, _run_tags(config, ingest))
    alerts = CollapseAlerts(config, run_name)

    def on_message(message: dict[str, float]) -> None:  # a driver thread, in this task's context
        kind = message.get("kind")
        if kind is None:
            progress.update(message)
        elif kind == "collapse":
            alerts.handle(message)
        elif live is not None:
            live.log(message)

    try:
        outcome = ray_train.fit(job, progress=on_message)
    except BaseException as exc:
        if live is not None:
            live.close("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    state = outcome.state
    if state.stopped:
        reason = (
            f"{state.stopped}. Its checkpoint is kept at {outcome.checkpoint_path}; running the same recipe again "
            f"stops at the same point: change it (lower train.lr, or the method's temperatures or momentum) to "
            f"start a new training run"
        )
        progress.finish(outcome.steps, stopped=True)
        alerts.stopped(reason)
        if live is not None:
            live.close("FAILED", reason)
        raise TrainingCollapsed(reason)
    progress.finish(outcome.steps)
    if live is not None:
        live.close("FINISHED")
    history = outcome.history
    checkpoint = outcome.best_checkpoint_path or outcome.checkpoint_path
    if config.train.keep_best:
        best = (
            f"step {state.best_step} ({state.best_metric} {state.best_score:.4f})"
            if outcome.best_checkpoint_path and state.best_score is not None
            else "none (no monitor score): the last checkpoint"
        )
        print(f"train.keep_best: evaluating and registering the best checkpoint, {best}")
    record = PretrainRecord(
        ingest=ingest,
        run_name=outcome.run_name,
        storage_path=outcome.storage_path,
        checkpoint_path=checkpoint,
        last_checkpoint_path=outcome.checkpoint_path,
        best_step=state.best_step if outcome.best_checkpoint_path else None,
        best_metric=state.best_metric if outcome.best_checkpoint_path else None,
        best_score=state.best_score if outcome.best_checkpoint_path else None,
        mlflow_run_id=live.run_id if live is not None else None,
        epochs=len(history),
        steps=outcome.steps,
        final_loss=history[-1]["loss"] if history else float("nan"),
        images_per_s=sum(h["images_per_s"] for h in history) / max(len(history), 1),
        history=history,
        resumed_from=state.resumed_from,
        corrupt_samples=state.corrupt_samples,
        workers=state.workers,
        startup=_startup(started_at, connected_at, state.startup),
        duration_s=time.perf_counter() - start,
    )
    create_markdown_artifact(
        key="pretrain-summary",
        markdown=(
            f"### Pretrain\nRay Train run `{run_name}`, {record.epochs} epochs, {record.steps} steps, "
            f"final loss {record.final_loss:.4f}, {record.images_per_s:.0f} images/s.\n\n"
            f"Checkpoint: `{record.checkpoint_path}`\n\n"
            f"Workers: {', '.join(sorted({str(w['host']) for w in record.workers}))} "
            f"({len({w['node_id'] for w in record.workers})} Ray node(s)); "
            f"resumed from step(s) {record.resumed_from or 'none'}; "
            f"{record.corrupt_samples} unreadable sample(s) skipped.\n"
        ),
    )
    return record


class TrainingProgress:
    """A Prefect progress artifact, updated while the workers train (from a driver thread)."""

    def __init__(self, run_name: str) -> None:
        self.run_name = run_name
        self.artifact_id = create_progress_artifact(
            progress=0.0, key="pretrain-progress", description=f"Ray Train run {run_name}: starting"
        )

    def update(self, message: dict[str, float]) -> None:
        step, total = int(message["step"]), max(int(message["total"]), 1)
        rate = message.get("steps_per_s", 0.0)
        eta = f", about {(total - step) / rate / 60:.1f} min left" if rate > 0 else ""
        update_progress_artifact(
            self.artifact_id,
            progress=100.0 * step / total,
            description=f"Ray Train run {self.run_name}: step {step}/{total}, loss {message['loss']:.4f}{eta}",
        )

    def finish(self, steps: int, stopped: bool = False) -> None:
        what = "stopped early (collapse)" if stopped else "done"
        update_progress_artifact(
            self.artifact_id, progress=100.0, description=f"Ray Train run {self.run_name}: {what}, {steps} steps"
        )


COLLAPSE_EVENT = "sslpipe.training.collapse-warning"
COLLAPSE_STOPPED_EVENT = "sslpipe.training.collapse-stopped"


class CollapseAlerts:
    """Collapse as Prefect sees it: an event an automation can match (``sslpipe.training.collapse-
    warning`` while a ``train.on_collapse=warn`` run goes on, ``...-stopped`` when ``stop`` ends
    it), with the training run as its resource and the flow run as a related one, and an artifact."""

    def __init__(self, config: PipelineConfig, run_name: str) -> None:
        self.config, self.run_name = config, run_name

    def _emit(self, event: str, payload: dict[str, object]) -> None:
        from prefect.events import emit_event

        related = []
        if runtime.flow_run.id:
            flow_run = {"prefect.resource.id": f"prefect.flow-run.{runtime.flow_run.id}"}
            related.append(
                flow_run | {"prefect.resource.role": "flow-run", "prefect.resource.name": str(runtime.flow_run.name)}
            )
        emit_event(
            event=event,
            resource={
                "prefect.resource.id": f"sslpipe.training-run.{self.run_name}",
                "prefect.resource.name": self.run_name,
            },
            related=related,
            payload=payload,
        )

    def handle(self, message: dict[str, object]) -> None:
        """A worker's alert: the health crossed the threshold for ``train.collapse_patience`` epochs."""
        text = (
            f"epoch {message['epoch']}: {message['message']} ({message['streak']} epochs in a row; "
            f"train.on_collapse={message['action']})"
        )
        print(f"COLLAPSE {text}")
        if message["action"] == "warn":
            self._emit(COLLAPSE_EVENT, {"message": text, "epoch": message["epoch"], "step": message["step"]})
            create_markdown_artifact(
                key="collapse-warning",
                markdown=f"### Possible representation collapse\nRay Train run `{self.run_name}`, {text}.\n\n"
                "Training goes on (`train.on_collapse=warn`); `train.on_collapse=stop` would end it here.\n",
                description="Collapse warning",
            )

    def stopped(self, reason: str) -> None:
        self._emit(COLLAPSE_STOPPED_EVENT, {"message": reason})
        create_markdown_artifact(
            key="collapse-stopped", markdown=f"### Training stopped: collapse\n{reason}\n", description="Collapse"
        )


def _run_tags(config: PipelineConfig, ingest: IngestRecord) -> dict[str, str]:
    url = runtime.flow_run.ui_url
    return {
        "sslpipe.manifest_fingerprint": ingest.fingerprint,
        "sslpipe.data_uri": ingest.shard_folder,
        "sslpipe.method": config.method.name,
        "sslpipe.backbone": config.model.backbone,
        "sslpipe.prefect_flow_run_id": str(runtime.flow_run.id or ""),
        "sslpipe.prefect_flow_run_url": url if url and url.startswith("http") else "",
    }


def _startup(started_at: float, connected_at: float, worker: dict[str, float]) -> dict[str, float]:
    """The stage's fixed cost before the first step of its latest (re)start, in seconds."""
    entered = worker.get("loop_entered_at", connected_at)
    first = worker.get("first_batch_at", entered)
    return {
        "ray_connect_s": round(connected_at - started_at, 3),
        "worker_group_s": round(max(entered - connected_at, 0.0), 3),
        "first_batch_s": round(max(first - entered, 0.0), 3),
        "total_s": round(max(first - started_at, 0.0), 3),
    }


def _check_cluster_resources(config: PipelineConfig) -> None:
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    need = config.ray.num_workers * config.ray.cpus_per_worker
    if need > cpus:
        raise PreflightError(
            f"ray.num_workers x ray.cpus_per_worker needs {need} CPUs but the Ray cluster has {cpus:g}: "
            f"lower ray.num_workers or add nodes"
        )
