"""The whole product as its users run it: a real ``prefect server start`` (SQLite), ``sslpipe serve``
registering the deployments and executing their runs, pipeline runs triggered through the Prefect
API with non-default parameters (as the UI's "custom run" does), a local Ray with two workers and
MLflow on SQLite.

Two runs of the same parameters:
  A. evaluation fails on every attempt (injected): the run fails after Prefect's retry.
  B. evaluation fails on its first attempt only: ingest and pretrain come from the cache (the run
     resumes at stage 3), Prefect retries evaluation and the run completes.
(That a fully cached run reuses evaluation too, and registration its model version, is covered by
tests/test_caching.py and tests/registry.)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import SSLPIPE, free_port, run_sslpipe
from servers import PrefectProcesses, wait_http

pytestmark = pytest.mark.slow

SENTINELS = ("AKIASENTINEL7Q2X", "sentinel-aws-secret-9d8c7b", "sentinel-mlflow-token-4e5f")
PARAMETERS = [
    "train.epochs=2",
    "train.max_steps_per_epoch=2",
    "train.batch_size=64",
    "model.image_size=16",  # a quarter of the default's evaluation cost
    "eval.fewshot_shots=[5]",
    "eval.fewshot_seeds=1",
    "eval.linear_c=[1.0]",
    "flow.retries.evaluate=1",
    "flow.retry_delay_s=1",
]


class Served(PrefectProcesses):
    """A Prefect server and ``sslpipe serve`` with their API URL, logs and work directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"
        self.faults = root / "faults.json"
        self.api = f"http://127.0.0.1:{free_port()}/api"
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING", "RAY_ADDRESS"))}
        env.update(
            PREFECT_HOME=str(self.root / "prefect-home"),
            PREFECT_API_URL=self.api,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONUNBUFFERED="1",
            SSLPIPE_FAULTS=str(self.faults),
            PREFECT_RUNNER_POLL_FREQUENCY="1",  # serve picks up a new run within a second (default 10 s)
            # Credentials a real deployment would hold; nothing here uses them, nothing may show them.
            AWS_ACCESS_KEY_ID=SENTINELS[0],
            AWS_SECRET_ACCESS_KEY=SENTINELS[1],
            MLFLOW_TRACKING_TOKEN=SENTINELS[2],
        )
        return env

    def start(self) -> None:
        port = self.api.rsplit(":", 1)[1].split("/")[0]
        server_log = self.root / "server.log"
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
            cwd=self.root, env=self.env(), stdout=server_log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.procs.append(server)
        wait_http(f"{self.api}/health", server, server_log)
        serve_log = self.root / "serve.log"
        serve = subprocess.Popen(
            [str(SSLPIPE), "serve", "--cron", "none", "--set", f"work_dir={self.work}"],
            cwd=self.root, env=self.env(), stdout=serve_log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.procs.append(serve)
        self.call(self._wait_for_deployments, serve, serve_log)

    @staticmethod
    def _wait_for_deployments(serve: subprocess.Popen[bytes], log: Path) -> None:
        import time

        from prefect.client.orchestration import get_client

        deadline = time.monotonic() + 180
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                if serve.poll() is not None:
                    raise RuntimeError(f"sslpipe serve exited with {serve.returncode}:\n{log.read_text()[-3000:]}")
                with contextlib.suppress(Exception):
                    names = {d.name for d in client.read_deployments()}
                    if {"nightly", "promote", "ingest", "pretrain", "evaluate", "register"} <= names:
                        return
                time.sleep(1)
        raise TimeoutError(f"sslpipe serve registered no deployments:\n{log.read_text()[-3000:]}")

    def run_pipeline(self, faults: dict[str, str], parameters: dict[str, Any]) -> Any:
        from prefect.deployments import run_deployment

        self.faults.write_text(json.dumps(faults))
        return self.call(lambda: run_deployment("sslpipe/nightly", parameters=parameters, timeout=600, poll_interval=1))

    def task_runs(self, flow_run_id: Any) -> dict[str, Any]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        def read() -> dict[str, Any]:
            with get_client(sync_client=True) as client:
                runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {r.name.rsplit("-", 1)[0]: r for r in runs}

        return self.call(read)

    def artifacts(self, flow_run_id: Any) -> dict[str, Any]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        def read() -> dict[str, Any]:
            with get_client(sync_client=True) as client:
                found = client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
                )
            return {a.key: a for a in found}

        return self.call(read)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("served"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def runs(served: Served) -> dict[str, Any]:
    from sslcore.config import load_config

    config = load_config(None, [f"work_dir={served.work}", *PARAMETERS]).model_dump(mode="json")
    parameters = {"config": config}
    return {
        "config": config,
        "A": served.run_pipeline({"evaluate": "always"}, parameters),
        "B": served.run_pipeline({"evaluate": "first_attempt"}, parameters),
    }


def _records(served: Served) -> dict[str, dict[str, Any]]:
    folder = served.work / "records"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def test_runs_use_the_parameters_given_through_the_api(served: Served, runs) -> None:
    for name in "AB":
        assert runs[name].parameters["config"]["train"]["max_steps_per_epoch"] == 2
    pretrain = _records(served)["pretrain"]
    assert pretrain["epochs"] == 2 and pretrain["steps"] == 4, "training ran with the run's parameters"


def test_a_stage_failing_beyond_its_retries_fails_the_run(served: Served, runs) -> None:
    assert runs["A"].state.is_failed()
    tasks = served.task_runs(runs["A"].id)
    assert tasks["ingest"].state.is_completed() and tasks["pretrain"].state.is_completed()
    assert tasks["evaluate"].state.is_failed()
    assert tasks["evaluate"].run_count == 2, "one retry (flow.retries.evaluate=1), then the run failed"
    assert "register" not in tasks


def test_rerun_resumes_at_the_failed_stage_and_prefect_retries_it(served: Served, runs) -> None:
    assert runs["B"].state.is_completed(), runs["B"].state
    tasks = served.task_runs(runs["B"].id)
    assert tasks["ingest"].state.name == "Cached" and tasks["pretrain"].state.name == "Cached"
    assert tasks["evaluate"].state.name == "Completed" and tasks["evaluate"].run_count == 2, "retried once"
    assert tasks["register"].state.is_completed()
    assert not _records(served)["register"]["reused"], "registered once, by this run"


def test_run_artifacts(served: Served, runs) -> None:
    first = served.artifacts(runs["A"].id)
    assert {"ingest-summary", "pretrain-summary", "pretrain-progress"} <= set(first)
    progress = first["pretrain-progress"]
    assert progress.type == "progress" and progress.data == 100.0
    assert "done, 4 steps" in (progress.description or "")
    summary = served.artifacts(runs["B"].id)["run-summary"]
    registered = _records(served)["register"]
    assert registered["run_id"] in summary.data and f"version {registered['version']}" in summary.data


def test_invalid_parameters_are_rejected_before_a_run_starts(served: Served, runs) -> None:
    from prefect.deployments import run_deployment

    bad = json.loads(json.dumps(runs["config"]))
    bad["train"]["batch_size"] = -64
    with pytest.raises(Exception, match=r"batch_size|validation|schema") as info:
        served.call(lambda: run_deployment("sslpipe/nightly", parameters={"config": bad}, timeout=0))
    assert "-64" in str(info.value) or "greater than 0" in str(info.value)


def test_shards_hold_every_digit(served: Served, runs) -> None:
    record = _records(served)["ingest"]
    manifest = json.loads(Path(record["manifest_path"]).read_text())
    assert sum(s["samples"] for split in manifest["splits"].values() for s in split["shards"]) == 1797
    assert set(manifest["splits"]) == {"train", "test"}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            assert (Path(record["shard_folder"]) / shard["name"]).stat().st_size == shard["bytes"]


def test_training_ran_on_two_ray_workers_and_checkpointed(served: Served, runs) -> None:
    record = _records(served)["pretrain"]
    assert all(np.isfinite(h["loss"]) and h["images_per_s"] > 0 for h in record["history"])
    checkpoints = sorted(p.name for p in Path(record["storage_path"], record["run_name"]).glob("step-*"))
    assert checkpoints == ["step-00000002", "step-00000004"]  # one per epoch of 2 steps
    assert sorted(int(w["rank"]) for w in record["workers"]) == [0, 1]
    assert all(0.0 <= h["knn_top1"] <= 1.0 for h in record["history"]), "the kNN monitor runs by default"


def test_model_version_with_candidate_alias(served: Served, runs) -> None:
    from mlflow.tracking import MlflowClient

    reg, evaluated = _records(served)["register"], _records(served)["evaluate"]
    client = MlflowClient(reg["tracking_uri"])
    version = client.get_model_version_by_alias(reg["model_name"], "candidate")
    assert str(version.version) == reg["version"]
    assert len(client.search_model_versions(f"name='{reg['model_name']}'")) == 1
    assert version.tags["sslpipe.prefect_flow_run_id"] == str(runs["B"].id)
    assert len(version.tags["sslpipe.manifest_fingerprint"]) == 64
    run = client.get_run(reg["run_id"])
    assert run.data.params["train.epochs"] == "2"
    assert evaluated["headline"] == "digits/ssl/knn_k20_top1"
    assert evaluated["baseline"] == "digits/random_init/knn_k20_top1"
    metrics = evaluated["metrics"]
    for key in (evaluated["headline"], evaluated["baseline"], "digits/ssl/linear_top1", "digits/pixels/knn_k20_top1"):
        assert run.data.metrics[key] == pytest.approx(metrics[key])
    artifacts = {f.path for f in client.list_artifacts(reg["run_id"], "plots")}
    assert {"plots/training_curves.png", "plots/digits_tsne.png", "plots/digits_confusion.png",
            "plots/augmented_views.png"} <= artifacts  # fmt: skip


def _digits(n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    images = load_digits().images[:n]
    return np.round(images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (n, 8, 8, 1)


def test_pyfunc_embeds_uint8_images(served: Served, runs) -> None:
    import mlflow

    reg = _records(served)["register"]
    mlflow.set_tracking_uri(reg["tracking_uri"])
    model = mlflow.pyfunc.load_model(reg["model_uri"])
    gray = model.predict(_digits(5))
    assert gray.shape == (5, 512) and gray.dtype == np.float32 and np.isfinite(gray).all()
    rgb = model.predict(np.repeat(_digits(5), 3, axis=-1))
    np.testing.assert_allclose(gray, rgb, rtol=1e-5, atol=1e-5)
    odd = model.predict(np.random.default_rng(0).integers(0, 255, (3, 40, 23, 3), dtype=np.uint8))
    assert odd.shape == (3, 512)


def test_embed_command_writes_npy(served: Served, runs, tmp_path: Path) -> None:
    import mlflow

    reg = _records(served)["register"]
    paths = []
    for i, image in enumerate(_digits(4)):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(image[..., 0], mode="L").save(paths[-1])
    out = tmp_path / "emb.npy"
    result = run_sslpipe(
        "embed", "--model", reg["model_uri"], "--set", f"work_dir={served.work}",
        "-o", str(out), *map(str, paths), cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    emb = np.load(out)
    mlflow.set_tracking_uri(reg["tracking_uri"])
    expected = mlflow.pyfunc.load_model(reg["model_uri"]).predict(_digits(4))
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)


def test_secrets_never_reach_logs_records_artifacts_or_mlflow(served: Served, runs) -> None:
    from mlflow.tracking import MlflowClient

    texts = {str(p): p.read_bytes() for p in served.root.rglob("*") if p.is_file() and p.stat().st_size < 20_000_000}
    assert any(name.endswith("serve.log") for name in texts) and any("mlflow.db" in name for name in texts)
    for name in "AB":
        texts[f"run {name} parameters"] = json.dumps(runs[name].parameters).encode()
        for key, artifact in served.artifacts(runs[name].id).items():
            texts[f"artifact {key}"] = f"{artifact.data} {artifact.description}".encode()
    reg = _records(served)["register"]
    client = MlflowClient(reg["tracking_uri"])
    run = client.get_run(reg["run_id"])
    version = client.get_model_version(reg["model_name"], reg["version"])
    texts["mlflow run"] = json.dumps([run.data.params, run.data.tags, version.tags]).encode()
    for sentinel in SENTINELS:
        leaks = [name for name, data in texts.items() if sentinel.encode() in data]
        assert not leaks, f"{sentinel} found in {leaks}"
