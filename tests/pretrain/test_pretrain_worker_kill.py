"""Fault tolerance of the pretrain stage on a real local Ray: SIGKILLed Ray Train workers are
replaced and training resumes from the latest checkpoint, up to ``ray.max_failures``, after which the
run fails clearly and a re-run resumes from its newest complete checkpoint."""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import ray
from pretrain_helpers import checkpoint_steps, fast_training, ingest_digits, wait_for
from ray.exceptions import ActorDiedError
from ray.train import ControllerError, WorkerGroupError
from ray.util.placement_group import placement_group, placement_group_table

from sslcore.config import load_config
from sslcore.data.manifest import read_manifest
from sslcore.train import plan_steps
from tasks import ray_groups, ray_train
from tasks.pretrain import run_name_for
from tasks.train_worker import WorkerJob

pytestmark = pytest.mark.slow


def _train_worker_pids() -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,  # this session's Ray, not another on the machine
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
    )
    return [a.pid for a in actors if a.pid]


def _newest(run_dir: Path) -> int:
    return max(checkpoint_steps([str(p) for p in run_dir.glob("step-*")]), default=0)


def test_killed_workers_are_replaced_up_to_max_failures_then_the_run_fails_and_resumes(
    tmp_path: Path, local_ray
) -> None:
    """SIGKILL a worker: Ray replaces the group, which resumes from the latest checkpoint. Kill one
    more than ``ray.max_failures`` allows: the run fails with a message naming its newest checkpoint,
    and running it again resumes from there and completes the planned steps."""
    record = ingest_digits(tmp_path)
    overrides = fast_training(tmp_path, "ray.max_failures=1", "train.max_steps_per_epoch=15")[1::2]
    cfg = load_config(None, overrides)
    plan = plan_steps(cfg, read_manifest(record.shard_folder).split("train").samples)
    storage = tmp_path / "ray_results"
    run_name = run_name_for(cfg, record)
    run_dir = storage / run_name
    every = cfg.train.checkpoint_every_steps
    assert every is not None
    kills: list[dict[str, Any]] = []

    def kill_twice() -> None:
        for _ in range(2):
            # Two intervals past the previous kill, so that at least one checkpoint of this worker
            # group is complete whatever is being written.
            target = (max(kills[-1]["checkpoints"]) if kills else 0) + 2 * every
            wait_for(lambda target=target: _newest(run_dir) >= target, 300, f"a checkpoint at step {target}")
            pids = [p for p in _train_worker_pids() if all(p != k["pid"] for k in kills)]
            kills.append({"pid": pids[-1], "checkpoints": checkpoint_steps([str(p) for p in run_dir.glob("step-*")])})
            os.kill(pids[-1], signal.SIGKILL)  # a real worker process, as the OOM killer would

    killer = threading.Thread(target=kill_twice, daemon=True)
    killer.start()
    with pytest.raises(ray_train.TrainingRunFailed) as failed:
        ray_train.fit(WorkerJob.planned(cfg, record.shard_folder, str(storage), run_name))
    killer.join(timeout=5)
    assert len(kills) == 2, f"expected two kills, got {kills}"
    message = str(failed.value)
    assert f"ray.max_failures={cfg.ray.max_failures}" in message and "resume" in message, message
    kept = re.search(r"step-(\d{8}) \(step (\d+) of (\d+)\)", message)
    assert kept is not None, message
    assert int(kept.group(2)) >= max(kills[1]["checkpoints"]) - every and int(kept.group(3)) == plan.total_steps

    assert ray_groups.this_jobs_groups() == [], "the failed run must leave no placement group holding CPUs"

    # The re-run also meets what a worker lost during its group's start makes Ray Train leave behind
    # (see tasks/ray_groups.py): a placement group of this job holding every CPU the workers need.
    # Killing a worker inside that window is a matter of luck (about one try in three), so the test
    # leaves the same placement group deterministically.
    leaked = placement_group([{"CPU": cfg.ray.cpus_per_worker}] * cfg.ray.num_workers)
    ray.get(leaked.ready(), timeout=60)
    outcome = ray_train.fit(WorkerJob.planned(cfg, record.shard_folder, str(storage), run_name))  # the stage run again
    assert placement_group_table(leaked)["state"] == "REMOVED", "the left-behind placement group was removed"
    state = outcome.state
    assert outcome.steps == plan.total_steps, "the run must finish with the planned step count"
    assert len(state.history) == cfg.train.epochs
    assert len(state.resumed_from) == 2, f"expected a restart by Ray and a resume by the re-run: {state.resumed_from}"
    by_ray, by_rerun = state.resumed_from
    # Each resumed from the newest complete checkpoint in storage (the newest on disk, or the one
    # before it if the kill landed while it was being written), whether or not Ray had registered it.
    for resumed, kill in zip(state.resumed_from, kills, strict=True):
        assert resumed >= max(kill["checkpoints"]) - every and resumed > 0
        assert resumed % every == 0 or resumed % plan.steps_per_epoch == 0
    assert by_rerun == int(kept.group(2)) and by_rerun > by_ray
    assert not {k["pid"] for k in kills} & {w["pid"] for w in state.workers}, "the killed workers were replaced"
    # Old checkpoints were pruned to ray.checkpoints_to_keep.
    assert len(checkpoint_steps([str(p) for p in run_dir.glob("step-*")])) <= cfg.ray.checkpoints_to_keep


@pytest.mark.parametrize(
    ("error", "says", "restarts_again"),
    [
        (WorkerGroupError("worker 1 died", {1: ActorDiedError()}), "after ray.max_failures=2 restarts", False),
        (ControllerError(ActorDiedError()), "workers died while starting 3 times", True),
        (ControllerError(ValueError("bad callback")), "failed in Ray Train's controller (ValueError", False),
    ],
)
def test_the_failure_message_says_what_failed(
    tmp_path: Path, error: Exception, says: str, restarts_again: bool
) -> None:
    """A worker lost while its group starts reaches the driver as an error of Ray Train's
    controller; the stage restarts the run for it (counted against ``ray.max_failures``), and the
    message never claims restarts of the worker group that did not happen."""
    cfg = load_config(None, ["ray.max_failures=2"])
    message = ray_train._failure_message(cfg, str(tmp_path), "run", 100, error, restarts=2)
    assert says in message and "no complete checkpoint" in message, message
    assert ray_train._worker_lost_at_start(error) is restarts_again
    assert ("restarts of its worker group" in message) is isinstance(error, WorkerGroupError)
