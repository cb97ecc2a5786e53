"""Config files agree with the code: deployments point at real flows, the README at real commands."""

from __future__ import annotations

import importlib
import subprocess

import yaml
from prefect import Flow

from conftest import REPO


def test_prefect_yaml_entrypoints_resolve_to_flows() -> None:
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    assert spec["deployments"], "no deployments declared"
    for deployment in spec["deployments"]:
        path, _, name = deployment["entrypoint"].partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        assert isinstance(flow, Flow), deployment["entrypoint"]
        accepted = set(flow.parameters.properties)
        assert set(deployment.get("parameters") or {}) <= accepted
        for schedule in deployment.get("schedules", []):
            assert len(schedule["cron"].split()) == 5


def test_pipeline_deployment_is_scheduled() -> None:
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    pipeline = [d for d in spec["deployments"] if d["entrypoint"].endswith(":pipeline")]
    assert pipeline and pipeline[0]["schedules"][0]["cron"]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second() -> None:
    readme = (REPO / "README.md").read_text().splitlines()
    commands = [line for line in readme[:12] if line.startswith("python3.11 -m venv")]
    assert len(commands) == 2
    assert commands[0].endswith("sslpipe run")
    assert "pytest" in commands[1] and ".[test]" in commands[1]
    extracted = subprocess.run(
        ["awk", "/^<!-- test-command -->/{found=1; next} found && !/^```/{print; exit}", "README.md"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert extracted == commands[1]
    assert "test-command" in (REPO / ".ci" / "run").read_text()
