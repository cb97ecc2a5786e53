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
from pretrain_helpers import checkpoint_steps, fast_training, ingest_digits, wait_for

from sslcore.config import load_config
from sslcore.data.manifest import read_manifest
from sslcore.train import plan_steps
from tasks import ray_train
from tasks.pretrain import run_name_for

pytestmark = pytest.mark.slow


def _train_worker_pids() -> list[int]:
    import ray
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
        ray_train.fit(cfg, record.shard_folder, str(storage), run_name)
    killer.join(timeout=5)
    assert len(kills) == 2, f"expected two kills, got {kills}"
    message = str(failed.value)
    assert f"ray.max_failures={cfg.ray.max_failures}" in message and "resume" in message, message
    kept = re.search(r"step-(\d{8}) \(step (\d+) of (\d+)\)", message)
    assert kept is not None, message
    assert int(kept.group(2)) >= max(kills[1]["checkpoints"]) - every and int(kept.group(3)) == plan.total_steps

    outcome = ray_train.fit(cfg, record.shard_folder, str(storage), run_name)  # the stage run again
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
