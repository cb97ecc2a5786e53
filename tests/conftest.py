"""Shared test set-up: no phone-home, and helpers for running the real ``sslpipe`` command."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servers import MlflowServer, MotoServer, free_port  # noqa: F401 - free_port: tests import it from here

for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
SSLPIPE = Path(sys.executable).with_name("sslpipe")

# The longest test files, longest first. pytest-xdist (``--dist loadfile``) hands whole files to its
# processes in collection order, so a long file collected late runs alone at the end; starting the
# longest ones first lets the short ones fill the gaps. xdist would re-sort the files by their number
# of tests (most first), which puts the long one-test files last: ``--no-loadscope-reorder`` in
# pyproject.toml keeps this order.
LONGEST_FIRST = (
    "tests/test_e2e.py",
    "tests/test_unlabeled.py",
    "tests/pretrain/test_pretrain_faults.py",
    "tests/registry/test_registry.py",
    "tests/test_methods_pipeline.py",
    "tests/pretrain/test_pretrain_cluster.py",
    "tests/pretrain/test_pretrain_force.py",
    "tests/pretrain/test_pretrain_worker_kill.py",
    "tests/pretrain/test_collapse.py",
    "tests/core/methods/test_method_learning_masked.py",
    "tests/core/methods/test_method_learning.py",
)


# Fixtures that start a service: a test that uses one is ``slow`` (the quick suite starts none).
SERVICE_FIXTURES = frozenset({"prefect_server", "local_ray", "mlflow_server", "s3_endpoint", "s3_bucket"})


def unmarked_service_tests(items: list[pytest.Item]) -> list[str]:
    """Ids of the tests that use a service fixture but are not marked ``slow``."""
    return [
        item.nodeid
        for item in items
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = unmarked_service_tests(items)
    if unmarked:
        raise pytest.UsageError(f"tests that start a service must be marked slow: {', '.join(unmarked)}")
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}

    def key(item: pytest.Item) -> int:
        return rank.get(Path(item.path).resolve().relative_to(REPO).as_posix(), len(rank))

    items.sort(key=key)  # stable: within a file, and for every other file, the order stays


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped IDX file (the MNIST/Fashion-MNIST format) of unsigned bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def random_fashion_idx(folder: Path, train: int, test: int) -> Path:
    """Fashion-MNIST's four IDX files in ``folder``, random 28x28 images with cycling labels (CI has no Debian
    Fashion-MNIST); for the benchmarks' smoke runs, whose accuracies are not checked."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


def run_sslpipe(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed console script as a user would."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return subprocess.run([str(SSLPIPE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def require_private_mounts(folder: Path) -> None:
    """Skip the calling test, with the reason, where ``folder`` cannot be covered by a tmpfs in a
    private mount namespace (``unshare``; needs root or user namespaces)."""
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'mount -t tmpfs -o size=64k none "{folder}"'],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespaces here: {(probe.stderr or probe.stdout).strip()[:200]}")


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto in server mode on 127.0.0.1 (as s3fs's own tests do): a real S3 HTTP endpoint."""
    server = MotoServer().start()
    yield server.endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    """A fresh bucket on the moto server, with credentials in the environment the usual way."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    name = f"sslpipe-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


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


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One server per test module (tests use their own model names); restartable by a test."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    env = {"MLFLOW_TRACKING_URI": server.uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
