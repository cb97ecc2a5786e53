"""infra/prefect.yaml deployed the way its header tells an operator to: a real ``prefect server start``
(SQLite, 127.0.0.1), ``prefect work-pool create --type process``, ``prefect deploy --all`` from the
repository root, and ``prefect worker start`` executing a run of one deployment in a subprocess, from the
checkout that the pull step's ``$SSLPIPE_REPO`` names in the worker's environment.

tests/test_e2e.py runs the deployments of ``sslpipe serve``; this is the other way in, through the work pool.
The run is the ingest stage on the bundled digits (the cheapest flow: no Ray, no MLflow).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, free_port
from servers import PrefectProcesses, wait_http

pytestmark = pytest.mark.slow

PREFECT_YAML = REPO / "infra" / "prefect.yaml"
POOL = "sslpipe-process"


class Deployed(PrefectProcesses):
    """A Prefect server, the work pool with infra/prefect.yaml's deployments, and a process worker."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.api = f"http://127.0.0.1:{free_port()}/api"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.deploy_output = ""
        self.worker_log = root / "worker.log"

    def env(self, repo: bool = True) -> dict[str, str]:
        """The environment of each process; ``repo``: with ``SSLPIPE_REPO``, which only the worker needs."""
        drop = ("PREFECT_", "MLFLOW_TRACKING", "RAY_ADDRESS", "SSLPIPE_REPO")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(
            PREFECT_HOME=str(self.root / "prefect-home"),
            PREFECT_API_URL=self.api,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_WORKER_QUERY_SECONDS="1",  # the worker picks up a new run within a second (default 10 s)
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONUNBUFFERED="1",
        )
        if repo:
            env["SSLPIPE_REPO"] = str(REPO)  # read by the pull step when the worker runs a flow
        return env

    def prefect(self, *args: str, cwd: Path) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "prefect", *args, "--no-prompt"],
            cwd=cwd, env=self.env(repo=False), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    def start(self) -> None:
        port = self.api.rsplit(":", 1)[1].split("/")[0]
        server_log = self.root / "server.log"
        # No scheduler: the nightly cron must not start a whole pipeline run if a test runs near 02:00 UTC.
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", port,
             "--no-scheduler", "--no-ui"],
            cwd=self.root, env=self.env(repo=False), stdout=server_log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.procs.append(server)
        wait_http(f"{self.api}/health", server, server_log)
        self.prefect("work-pool", "create", POOL, "--type", "process", cwd=self.root)
        self.deploy_output = self.prefect("deploy", "--prefect-file", str(PREFECT_YAML), "--all", cwd=REPO)
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process"],
            cwd=self.root, env=self.env(), stdout=self.worker_log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.procs.append(worker)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory):
    d = Deployed(tmp_path_factory.mktemp("deployed"))
    try:
        d.start()
        yield d
    finally:
        d.stop()


def _read_deployments() -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {d.name: d for d in client.read_deployments()}


def test_prefect_deploy_registers_every_deployment_in_the_work_pool(deployed: Deployed) -> None:
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    declared = {d["name"]: d for d in spec["deployments"]}
    registered = deployed.call(_read_deployments)
    assert set(registered) == set(declared), deployed.deploy_output
    for name, deployment in registered.items():
        assert deployment.entrypoint == declared[name]["entrypoint"], name
        assert deployment.work_pool_name == POOL, name
        # The worker resolves the checkout at run time: the template is stored, not the deploying machine's path.
        assert deployment.pull_steps == spec["pull"], name
        assert "config" in deployment.parameter_openapi_schema["properties"], name
        limit = declared[name]["concurrency_limit"]
        assert deployment.global_concurrency_limit is not None, name
        assert deployment.global_concurrency_limit.limit == limit["limit"], name
        assert deployment.concurrency_options is not None, name
        assert deployment.concurrency_options.collision_strategy == limit["collision_strategy"], name
        crons = [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules]
        assert crons == [(s["cron"], s["timezone"], s["active"]) for s in declared[name]["schedules"]], name


def test_the_worker_runs_a_deployment_to_completion(deployed: Deployed, tmp_path: Path) -> None:
    from prefect.deployments import run_deployment

    from sslcore.config import load_config

    work = tmp_path / "work"
    config = load_config(None, [f"work_dir={work}"]).model_dump(mode="json")
    run = deployed.call(
        lambda: run_deployment("sslpipe-ingest/ingest", parameters={"config": config}, timeout=300, poll_interval=1)
    )
    log = deployed.worker_log.read_text()
    assert run.state is not None and run.state.is_completed(), f"{run.state}\nworker log:\n{log[-3000:]}"
    assert run.work_pool_name == POOL
    assert str(run.id) in log, "the flow run was not executed by this worker"
    assert (work / "records" / "ingest.json").is_file(), "the ingest flow wrote no record"
    assert any((work / "shards").rglob("*.tar")), "the ingest flow wrote no shards"
