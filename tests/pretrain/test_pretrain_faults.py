"""Fault tolerance of the pretrain stage on a real local Ray: SIGKILLed Ray Train workers are
replaced and training resumes from the latest checkpoint, up to ``ray.max_failures``, after which the
run fails clearly and a re-run resumes; the whole pipeline killed mid-training (flow, driver and its
Ray together) resumes from its checkpoint on S3 (moto's server) when it is run again."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

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


def _newest(run_dir: Path) -> int:
    return max(_checkpoint_steps([str(p) for p in run_dir.glob("step-*")]), default=0)


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
            kills.append({"pid": pids[-1], "checkpoints": _checkpoint_steps([str(p) for p in run_dir.glob("step-*")])})
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
    assert len(_checkpoint_steps([str(p) for p in run_dir.glob("step-*")])) <= cfg.ray.checkpoints_to_keep


def test_killed_pipeline_resumes_from_its_s3_checkpoint_without_repeating_ingest(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, prefect_server
) -> None:
    """The whole pipeline (``sslpipe run``: the flow's process, its driver and the local Ray it
    started) is SIGKILLed after the first checkpoint reached S3. Running it again reuses the
    ingested shards (a cached stage), resumes that Ray Train run instead of starting over, then
    evaluates and registers: one MLflow run and one model version.

    The credentials are given only in the config (the environment has none), so this also proves
    that storage secrets reach the Ray workers, which write the checkpoints, and nowhere else.
    """
    from mlflow.tracking import MlflowClient

    secret = "sentinel-secret-1f2e3d"
    storage_path = f"s3://{s3_bucket}/ray"
    args = [
        "run",
        *fast_training(
            tmp_path,
            "ingest.shard_max_samples=200",
            f"ray.storage_path={storage_path}",
            f"storage.endpoint_url={s3_endpoint}",
            "storage.access_key_id=testing",
            f"storage.secret_access_key={secret}",
            "storage.region=us-east-1",
            "eval.fewshot_shots=[5]",
            "eval.fewshot_seeds=1",
            "eval.linear_c=[1.0]",
            "eval.plots=false",
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
    shards = sorted(p.name for p in (tmp_path / "shards").rglob("*.tar"))
    ingested = (tmp_path / "records" / "ingest.json").read_text()

    second = start_cli(*args, cwd=tmp_path, env=env, log=tmp_path / "second.log")
    second.wait(timeout=600)
    log = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, log[-3000:]
    assert re.search(r"ingest.*Cached", log), log[-3000:]  # not run again
    assert sorted(p.name for p in (tmp_path / "shards").rglob("*.tar")) == shards
    assert (tmp_path / "records" / "ingest.json").read_text() == ingested
    # Killed right after the first upload, maybe before Ray registered it: the stage still finds it.
    assert f"resuming from step {max(before)} " in log, log[-3000:]

    record = PretrainRecord.model_validate_json((tmp_path / "records" / "pretrain.json").read_text())
    assert record.resumed_from == [max(before)]
    assert record.steps == cfg.train.epochs * cfg.train.max_steps_per_epoch
    assert record.checkpoint_path.startswith(f"s3://{s3_bucket}/ray/")
    weights = backbone_state_dict(record.checkpoint_path, cfg.storage)  # what evaluate and register read
    assert weights and all(not k.startswith("backbone.") for k in weights)
    registered = json.loads((tmp_path / "records" / "register.json").read_text())
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    versions = client.search_model_versions(f"name = '{cfg.mlflow.model_name}'")
    assert [str(v.version) for v in versions] == [registered["version"]] == ["1"]
    assert [r.info.run_id for r in client.search_runs([registered["experiment_id"]])] == [registered["run_id"]]

    # The secret went to the workers through the object store only: not to logs or records.
    first_log = (tmp_path / "first.log").read_text()
    for text in (first_log, log, json.dumps(record.model_dump())):
        assert secret not in text
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert secret.encode() not in path.read_bytes(), path
