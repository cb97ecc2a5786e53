"""Live tracking: the MLflow run of a training run, open while it trains.

The pretrain stage opens (or, on a retry or a resumed pipeline run, finds again) one MLflow run per
Ray Train run, tagged with its name, before the first step; metrics reach it while the workers
train, from the driver (which alone needs to reach the tracking server, on a cluster as well):

* every ``train.log_every_steps`` steps: ``train/loss``, ``train/lr``, ``train/images_per_s`` and
  ``train/data_wait_fraction`` at the optimizer step;
* every epoch: ``train_<name>`` for every epoch metric (``train_loss``, ``train_knn_top1`` or
  ``train_retrieval_top1``, ``train_health_effective_rank``, ``train_data_wait_fraction``, ...);
* every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (10 by default): ``system/...``, rank
  0's machine as MLflow's system-metrics monitors measure it (CPU, memory, disk, network, GPU).

The register stage logs evaluation, artifacts and the model into the same run. Live tracking is
best effort: a tracking server that cannot be reached costs the curves, never the training.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from mlflow.entities import Metric, Param, Run, RunStatus
from mlflow.tracking import MlflowClient

from sslcore.config import PipelineConfig
from tasks.records import IngestRecord
from tasks.runtime import artifact_root, tracking_uri

RUN_NAME_TAG = "sslpipe.ray_run_name"
LIVE_TAG = "sslpipe.live"  # the run was opened by the pretrain stage and holds live training curves
STOPPED_TAG = "sslpipe.stopped"
TRAINING_PARAMS = ("model", "method", "augment", "train")  # what names the training run (run_name_for)


def experiment_id(client: MlflowClient, config: PipelineConfig) -> str:
    """The configured experiment's id, created (with the configured artifact root) if missing."""
    exp = client.get_experiment_by_name(config.mlflow.experiment)
    if exp is not None:
        return str(exp.experiment_id)
    return str(client.create_experiment(config.mlflow.experiment, artifact_location=artifact_root(config)))


def find_live_run(client: MlflowClient, experiment: str, run_name: str) -> Run | None:
    """The MLflow run the pretrain stage opened for the Ray Train run ``run_name``, if any."""
    runs = client.search_runs(
        [experiment],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}' and tags.`{LIVE_TAG}` = 'true'",
        order_by=["attributes.start_time ASC"],
        max_results=5,
    )
    return runs[0] if runs else None


def metric_steps(client: MlflowClient, run_id: str, key: str) -> set[int]:
    """The steps at which ``key`` was logged in the run."""
    return {m.step for m in client.get_metric_history(run_id, key)}


class LiveRun:
    """The training run's MLflow run; :meth:`log` takes the workers' messages from a driver thread."""

    def __init__(self, client: MlflowClient, run_id: str, *, reused: bool) -> None:
        self.client, self.run_id, self.reused = client, run_id, reused
        self.lock = threading.Lock()
        self.failures = 0
        self.system_step = self._next_system_step()

    @classmethod
    def open(cls, config: PipelineConfig, run_name: str, ingest: IngestRecord, tags: dict[str, str]) -> LiveRun | None:
        """Find the run of ``run_name`` or start it; None (with a printed reason) when MLflow cannot be reached."""
        from tasks.register import flatten

        uri = tracking_uri(config)
        try:
            client = MlflowClient(uri)
            experiment = experiment_id(client, config)
            found = find_live_run(client, experiment, run_name)
            if found is None:
                run = client.create_run(
                    experiment, run_name=run_name, tags={**tags, RUN_NAME_TAG: run_name, LIVE_TAG: "true"}
                )
                run_id = run.info.run_id
                training = config.model_dump(mode="json", include=set(TRAINING_PARAMS))
                params = flatten(training) | {"ray.num_workers": str(config.ray.num_workers)}
                items = list(params.items())
                for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                    client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in items[i : i + 100]])
                client.log_batch(
                    run_id,
                    metrics=[
                        Metric(f"data_{split}_samples", float(n), int(time.time() * 1000), 0)
                        for split, n in ingest.samples.items()
                    ],
                )
            else:
                run_id = found.info.run_id
                client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                for key, value in tags.items():
                    client.set_tag(run_id, key, value)
        except Exception as exc:  # the curves are lost, the training is not
            print(f"live tracking is off for this attempt: MLflow at {uri} failed ({type(exc).__name__}: {exc})")
            return None
        live = cls(client, run_id, reused=found is not None)
        verb = "continues" if live.reused else "opened"
        print(f"MLflow run {run_id} {verb} for {run_name}: training curves are logged while it trains")
        return live

    def _next_system_step(self) -> int:
        try:
            metrics = self.client.get_run(self.run_id).data._metric_objs
        except Exception:
            return 0
        steps = [m.step for m in metrics if m.key.startswith("system/")]
        return max(steps) + 1 if steps else 0

    def log(self, message: dict[str, Any]) -> None:
        """Log one worker message (``kind`` step, epoch or system); others are ignored."""
        kind, values = message.get("kind"), message.get("metrics", {})
        now = int(time.time() * 1000)
        if kind == "step":
            names = {k: f"train/{k}" for k in values}
            step = int(message["step"])
        elif kind == "epoch":
            names = {k: f"train_{k}" for k in values if k != "step"}
            step = int(message["step"])
        elif kind == "system":
            names = {k: f"system/{k}" for k in values}
            with self.lock:
                step, self.system_step = self.system_step, self.system_step + 1
        else:
            return
        metrics = [Metric(names[k], float(v), now, step) for k, v in values.items() if k in names and _number(v)]
        self._send(metrics)

    def _send(self, metrics: list[Metric]) -> None:
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as exc:
            self.failures += 1
            if self.failures in (1, 10, 100):  # say so, but not at every step
                print(f"could not log {len(metrics)} metric(s) to MLflow run {self.run_id} ({self.failures}x): {exc}")

    def close(self, status: str, reason: str | None = None) -> None:
        """End this attempt: FINISHED (register continues the run) or FAILED, with the reason as a tag."""
        try:
            if reason:
                self.client.set_tag(self.run_id, STOPPED_TAG, reason[:5000])
            self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:
            print(f"could not close MLflow run {self.run_id}: {exc}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isinf(value)
