"""Config files agree with the code: infra/prefect.yaml's schedules are ones `prefect deploy` accepts, the
README shows real commands. (That the deployments point at real flows and parameters is checked in
tests/test_operations_configs.py, and `prefect deploy` itself runs in tests/test_prefect_deploy.py.)
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from conftest import REPO


def _deploy_schedule(schedule: dict[str, Any]) -> Any:
    """A ``schedules:`` entry as ``prefect deploy`` turns it into a schedule: a ``CronSchedule`` (croniter
    parses the cron, the timezone must be a real one)."""
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule

    return _schedule_config_to_deployment_schedule(schedule)["schedule"]


def _schedules() -> list[dict[str, Any]]:
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    return [s for d in spec["deployments"] for s in d.get("schedules") or []]


def test_prefect_yaml_schedules_are_valid_cron_schedules() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    assert _schedules(), "infra/prefect.yaml schedules nothing (the nightly pipeline has a cron)"
    for schedule in _schedules():
        built = _deploy_schedule(schedule)
        assert isinstance(built, CronSchedule), schedule
        assert (built.cron, built.timezone) == (schedule["cron"], schedule["timezone"])


@pytest.mark.parametrize(
    "schedule",
    [
        {"cron": "every night", "timezone": "UTC"},
        {"cron": "0 2 * *", "timezone": "UTC"},  # four fields
        {"cron": "0 25 * * *", "timezone": "UTC"},  # hour 25
        {"cron": "0 2 * * *", "timezone": "Mars/Olympus_Mons"},
    ],
)
def test_the_schedule_check_rejects_a_bad_cron_or_timezone(schedule: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _deploy_schedule(schedule)


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
