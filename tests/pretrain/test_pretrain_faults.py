"""Fault tolerance of the whole pipeline on a real local Ray: killed mid-training (flow, driver and
its Ray together), it resumes from its checkpoint on S3 (moto's server) when it is run again. Worker
kills are in test_pretrain_worker_kill.py (a file of its own, so that test processes share the work)."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
from pretrain_helpers import checkpoint_steps, fast_training, kill_tree, quiet_env, start_cli, wait_for

from sslcore.config import load_config
from sslcore.storage import filesystem
from sslcore.train import backbone_state_dict
from tasks.records import PretrainRecord

pytestmark = pytest.mark.slow


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
            "ray.num_workers=1",  # one worker process is enough to write the checkpoints; it starts faster
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
        return checkpoint_steps([p for p in done if fs.exists(f"{p}/meta.json")])

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
