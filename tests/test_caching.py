"""Stage results cached across flow runs (Prefect's cache, results persisted as JSON to local or S3
storage), ``--force``, and what the flows do when a cached result points at outputs that are gone.

The flows run against Prefect's real test server; S3 is moto's server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_sslpipe
from flows.pipeline import ingest_flow
from sslcore.config import load_config
from sslcore.data.manifest import read_manifest
from tasks import caching


def _task_states(flow_state) -> list[tuple[str, str]]:
    """(task name, final state name) of every task run of a finished flow run, in start order."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.utilities.asyncutils import run_coro_as_sync

    flow_run_id = flow_state.state_details.flow_run_id

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return sorted(runs, key=lambda r: r.expected_start_time or r.created)

    return [(r.name.rsplit("-", 1)[0], r.state.name if r.state else "") for r in run_coro_as_sync(read())]


def _folder_source(root: Path, n: int) -> Path:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 7 % 256, i * 13 % 256, 90)).save(images / f"img{i:03d}.png")
    return images


@pytest.mark.slow  # starts a service (Prefect's test server or moto's S3)
def test_unchanged_ingest_comes_from_the_cache_as_json(tmp_path: Path, prefect_server) -> None:
    cfg = load_config(None, [f"work_dir={tmp_path}"])
    first = ingest_flow(cfg, return_state=True)
    second = ingest_flow(cfg, return_state=True)
    assert _task_states(first) == [("ingest", "Completed")]
    assert _task_states(second) == [("ingest", "Cached")]
    assert second.result() == first.result()
    stored = list((tmp_path / "results").iterdir())
    assert [p.name for p in stored] == [caching.ingest_key(cfg)]
    raw = stored[0].read_text()
    payload = json.loads(raw)  # JSON, not a pickle (with or without Prefect's metadata around it)
    if "metadata" in payload:
        assert payload["metadata"]["serializer"]["type"] == "json"
    assert "tasks.records.IngestRecord" in raw and first.result().manifest_path in raw


def test_cache_key_follows_source_contents_ingest_config_and_code(tmp_path: Path, monkeypatch) -> None:
    images = _folder_source(tmp_path, 12)
    base = [f"work_dir={tmp_path}", "ingest.source.kind=folder", f"ingest.source.path={images}"]
    key = caching.ingest_key(load_config(None, base))
    assert caching.ingest_key(load_config(None, base)) == key, "the key must be stable"
    assert caching.ingest_key(load_config(None, [*base, "ingest.shard_max_samples=4"])) != key
    assert caching.ingest_key(load_config(None, [*base, "train.epochs=3"])) == key, "training config is not ingest's"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(images / "new.png")
    assert caching.ingest_key(load_config(None, base)) != key, "a new image must miss the cache"
    (images / "new.png").unlink()
    assert caching.ingest_key(load_config(None, base)) == key
    monkeypatch.setattr(caching, "code_version", lambda: "another-release")
    assert caching.ingest_key(load_config(None, base)) != key


@pytest.mark.slow  # starts a service (Prefect's test server or moto's S3)
def test_force_ingest_verifies_the_shards_and_rewrites_a_damaged_one(tmp_path: Path, prefect_server) -> None:
    cfg = load_config(None, [f"work_dir={tmp_path}"])
    record = ingest_flow(cfg)
    manifest = read_manifest(record.shard_folder)
    shard = manifest.splits["train"].shards[0]
    path = Path(record.shard_folder) / shard.name
    original = path.read_bytes()
    path.write_bytes(original[:100] + b"\x00" * 64 + original[164:])  # same size, other bytes

    cached = ingest_flow(cfg, return_state=True)
    assert _task_states(cached) == [("ingest", "Cached")], "without --force the cache answers"
    forced = ingest_flow(cfg, force=True, return_state=True)
    assert _task_states(forced) == [("ingest", "Completed")]
    assert path.read_bytes() == original, "the damaged shard was written again, identical to the first time"
    assert not forced.result().reused
    again = ingest_flow(cfg, return_state=True)
    assert _task_states(again) == [("ingest", "Cached")] and again.result() == forced.result()


@pytest.mark.slow  # starts a service (Prefect's test server or moto's S3)
def test_cached_result_whose_shards_are_gone_runs_the_stage_again(tmp_path: Path, prefect_server) -> None:
    cfg = load_config(None, [f"work_dir={tmp_path}"])
    record = ingest_flow(cfg)
    shutil.rmtree(record.shard_folder)
    state = ingest_flow(cfg, return_state=True)
    assert _task_states(state) == [("ingest", "Cached"), ("ingest", "Completed")]
    assert Path(state.result().manifest_path).is_file()


@pytest.mark.slow  # starts a service (Prefect's test server or moto's S3)
def test_results_on_s3(tmp_path: Path, s3_endpoint: str, s3_bucket: str, prefect_server) -> None:
    import boto3

    overrides = [f"work_dir={tmp_path}", f"flow.result_storage=s3://{s3_bucket}/results",
                 f"storage.endpoint_url={s3_endpoint}"]  # fmt: skip
    cfg = load_config(None, overrides)
    first = ingest_flow(cfg, return_state=True)
    second = ingest_flow(cfg, return_state=True)
    assert [s for _, s in _task_states(first) + _task_states(second)] == ["Completed", "Cached"]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="results/")["Contents"]]
    assert keys == [f"results/{caching.ingest_key(cfg)}"]
    assert not (tmp_path / "results").exists()


def test_stage_options_follow_the_config() -> None:
    from prefect.cache_policies import NO_CACHE

    cfg = load_config(None, ["flow.retries.evaluate=3", "flow.retry_delay_s=2", "flow.timeouts_s.evaluate=60"])
    options = caching.stage_options(cfg, "evaluate", ["evaluate"])
    assert options["retries"] == 3 and options["retry_delay_seconds"] == [2, 4, 8]
    assert options["timeout_seconds"] == 60 and options["refresh_cache"] is True
    assert options["result_serializer"] == "json"
    for stage in ("ingest", "pretrain", "evaluate"):
        policy = caching.stage_options(cfg, stage)["cache_policy"]
        assert policy.stage == stage and policy.key_storage is None, "keys beside the results, not in the cwd"
    assert caching.stage_options(cfg, "register")["cache_policy"] is NO_CACHE, "register reconciles with MLflow"
    off = load_config(None, ["flow.cache=false"])
    assert caching.stage_options(off, "ingest")["cache_policy"] is NO_CACHE


@pytest.mark.parametrize(
    ("stage", "message"), [("register", "never cached"), ("pretrian", "not a stage; choose from ingest, pretrain")]
)
def test_force_names_a_cached_stage(tmp_path: Path, stage: str, message: str) -> None:
    result = run_sslpipe("run", "--force", stage, "--set", f"work_dir={tmp_path}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "shards").exists(), "nothing ran"


def test_every_cached_stage_keys_on_its_own_task_arguments(tmp_path: Path) -> None:
    """The policy reads the task's arguments as Prefect passes them (by the task's parameter names)."""
    import inspect

    from flows.pipeline import STAGE_TASKS
    from tasks.records import IngestRecord, PretrainRecord

    cfg = load_config(None, [f"work_dir={tmp_path}"])
    ingested = IngestRecord.model_construct(fingerprint="f" * 64)
    trained = PretrainRecord.model_construct(checkpoint_path=str(tmp_path / "step-00000004"), steps=4)
    upstream = {"ingest": (), "pretrain": (ingested,), "evaluate": (trained,)}
    keys = set()
    for stage, args in upstream.items():
        names = list(inspect.signature(STAGE_TASKS[stage].fn).parameters)
        inputs = dict(zip(names, (cfg, *args), strict=False))
        key = caching.stage_options(cfg, stage)["cache_policy"].compute_key(None, inputs, {})
        assert key is not None and key.startswith(f"{stage}-")
        keys.add(key)
    assert len(keys) == 3
