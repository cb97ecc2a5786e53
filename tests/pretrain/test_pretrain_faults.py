"""Fault tolerance of the pretrain stage on a real local Ray: a SIGKILLed Ray Train worker is
replaced and training resumes from the latest checkpoint; a whole stage killed mid-run (driver and
its Ray together) resumes from its checkpoint on S3 (moto's server) when it is run again."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path

import pytest
from pretrain_helpers import fast_training, ingest_digits, kill_tree, quiet_env, start_cli, wait_for

from sslcore.config import load_config
from sslcore.data.manifest import read_manifest
from sslcore.storage import filesystem
from sslcore.train import backbone_state_dict, plan_steps
from tasks import ray_train
from tasks.pretrain import run_name_for
from tasks.records import PretrainRecord

pytestmark = pytest.mark.slow

STEP_DIR = re.compile(r"step-(\d{8})$")


def _checkpoint_steps(paths: list[str]) -> list[int]:
    return sorted(int(m.group(1)) for p in paths if (m := STEP_DIR.search(p.rstrip("/"))))


def _train_worker_pids() -> list[int]:
    import ray
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,  # this session's Ray, not another on the machine
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
    )
    return [a.pid for a in actors if a.pid]


def test_killed_worker_is_replaced_and_training_resumes_from_latest_checkpoint(tmp_path: Path, local_ray) -> None:
    record = ingest_digits(tmp_path)
    overrides = fast_training(tmp_path)[1::2]
    cfg = load_config(None, overrides)
    plan = plan_steps(cfg, read_manifest(record.shard_folder).split("train").samples)
    storage = tmp_path / "ray_results"
    run_name = run_name_for(cfg, record)
    run_dir = storage / run_name

    killed: dict[str, object] = {}

    every = cfg.train.checkpoint_every_steps
    assert every is not None

    def kill_after_first_checkpoint() -> None:
        # Two intervals in, so that at least one checkpoint is complete whatever is being written.
        wait_for(
            lambda: max(_checkpoint_steps([str(p) for p in run_dir.glob("step-*")]), default=0) >= 2 * every,
            300,
            "two checkpoints",
        )
        pids = _train_worker_pids()
        killed["checkpoints"] = _checkpoint_steps([str(p) for p in run_dir.glob("step-*")])
        killed["pid"] = pids[-1]
        os.kill(pids[-1], signal.SIGKILL)  # a real worker process, as the OOM killer would

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    outcome = ray_train.fit(cfg, record.shard_folder, str(storage), run_name)
    killer.join(timeout=5)

    assert "pid" in killed, "the worker was never killed"
    state = outcome.state
    assert outcome.steps == plan.total_steps, "the run must finish with the planned step count"
    assert len(state.history) == cfg.train.epochs
    assert len(state.resumed_from) == 1, f"expected one restart, got {state.resumed_from}"
    resumed = state.resumed_from[0]
    seen = killed["checkpoints"]
    assert isinstance(seen, list)
    # Resumed from the newest complete checkpoint in storage (the newest on disk, or the one before
    # it if the kill landed while it was being written), whether or not Ray had registered it.
    assert resumed >= max(seen) - every and resumed > 0
    assert resumed % every == 0 or resumed % plan.steps_per_epoch == 0
    assert killed["pid"] not in {w["pid"] for w in state.workers}, "the killed worker was replaced"
    # Old checkpoints were pruned to ray.checkpoints_to_keep.
    assert len(_checkpoint_steps([str(p) for p in run_dir.glob("step-*")])) <= cfg.ray.checkpoints_to_keep


def test_killed_stage_resumes_from_its_s3_checkpoint(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, prefect_server
) -> None:
    """The whole stage (CLI, driver and the local Ray it started) is SIGKILLed after its first
    checkpoint reached S3; running it again resumes that Ray Train run instead of starting over.

    The credentials are given only in the config (the environment has none), so this also proves
    that storage secrets reach the Ray workers, which write the checkpoints, and nowhere else.
    """
    ingest_digits(tmp_path)
    secret = "sentinel-secret-1f2e3d"
    storage_path = f"s3://{s3_bucket}/ray"
    args = [
        "pretrain",
        *fast_training(
            tmp_path,
            f"ray.storage_path={storage_path}",
            f"storage.endpoint_url={s3_endpoint}",
            "storage.access_key_id=testing",
            f"storage.secret_access_key={secret}",
            "storage.region=us-east-1",
        ),
    ]
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    env = quiet_env()
    cfg = load_config(None, args[2::2])
    fs, root = filesystem(storage_path, cfg.storage)

    def s3_checkpoints() -> list[int]:
        """Steps of the complete checkpoints (both files uploaded) on S3."""
        fs.invalidate_cache()
        if not fs.exists(root):
            return []
        done = [p.rsplit("/", 1)[0] for p in fs.glob(f"{root}/pretrain-*/step-*/state.pt")]
        return _checkpoint_steps([p for p in done if fs.exists(f"{p}/meta.json")])

    first = start_cli(*args, cwd=tmp_path, env=env, log=tmp_path / "first.log")
    try:
        wait_for(lambda: bool(s3_checkpoints()) or first.poll() is not None, 400, "a checkpoint on S3")
    finally:
        kill_tree(first)
    before = s3_checkpoints()
    assert before, (tmp_path / "first.log").read_text()[-3000:]
    assert first.returncode == -signal.SIGKILL

    second = start_cli(*args, cwd=tmp_path, env=env, log=tmp_path / "second.log")
    second.wait(timeout=600)
    log = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, log[-3000:]
    # Killed right after the first upload, maybe before Ray registered it: the stage still finds it.
    assert f"resuming from step {max(before)} " in log, log[-3000:]

    record = PretrainRecord.model_validate_json((tmp_path / "records" / "pretrain.json").read_text())
    assert record.resumed_from == [max(before)]
    assert record.steps == cfg.train.epochs * cfg.train.max_steps_per_epoch
    assert record.checkpoint_path.startswith(f"s3://{s3_bucket}/ray/")
    weights = backbone_state_dict(record.checkpoint_path, cfg.storage)  # what evaluate and register read
    assert weights and all(not k.startswith("backbone.") for k in weights)

    # The secret went to the workers through the object store only: not to logs or records.
    first_log = (tmp_path / "first.log").read_text()
    for text in (first_log, log, json.dumps(record.model_dump())):
        assert secret not in text
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert secret.encode() not in path.read_bytes(), path
