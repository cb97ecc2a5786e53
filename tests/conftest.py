"""Shared test set-up: no phone-home, and helpers for running the real ``sslpipe`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
SSLPIPE = Path(sys.executable).with_name("sslpipe")


def run_sslpipe(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed console script as a user would."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return subprocess.run(
        [str(SSLPIPE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def prefect_server():
    """Prefect's test harness: a real temporary Prefect server on SQLite for the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray (2 CPUs), shut down after the session."""
    import ray

    from tasks.ray_train import connect

    connect(None)
    yield
    ray.shutdown()
