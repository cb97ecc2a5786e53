"""Shared by the pretrain-stage tests: digits shards with the record the ingest stage would write,
a fast training config, and a way to run and kill the ``sslpipe`` CLI with all its processes.

A plain module, not a ``conftest.py`` (see tests/core/data/sslcore_data_testing.py for why).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from conftest import SSLPIPE
from servers import kill_tree  # noqa: F401 - the pretrain tests import it from here
from sslcore.config import IngestConfig
from sslcore.data.ingest import ingest
from sslcore.storage import join
from tasks.records import IngestRecord


def ingest_digits(work: Path) -> IngestRecord:
    """Digits shards under ``work`` and ``work/records/ingest.json``, as ``sslpipe ingest`` leaves them."""
    result = ingest(IngestConfig(shard_max_samples=200), str(work / "shards"))
    m = result.manifest
    record = IngestRecord(
        shard_folder=result.folder,
        manifest_path=join(result.folder, "manifest.json"),
        fingerprint=m.fingerprint,
        samples={name: split.samples for name, split in m.splits.items()},
        num_classes=m.num_classes,
        rejected=0,
        reused=False,
        duration_s=0.0,
    )
    record.save(work / "records" / "ingest.json")
    return record


def fast_training(work: Path, *extra: str) -> list[str]:
    """``--set`` overrides for a short run of a tiny ResNet: 2 epochs x 10 steps, checkpoint every 3."""
    settings = [
        f"work_dir={work}",
        "model.backbone=test_resnet",
        "model.image_size=16",
        "method.projection_hidden_dim=64",
        "method.projection_dim=32",
        "train.batch_size=64",
        "train.epochs=2",
        "train.max_steps_per_epoch=10",
        "train.checkpoint_every_steps=3",
        "ray.checkpoints_to_keep=2",
        "train.knn_monitor_samples=0",
        *extra,
    ]
    return [arg for s in settings for arg in ("--set", s)]


def start_cli(*args: str, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``sslpipe ARGS`` in its own session (so that it and the Ray it starts can be killed together)."""
    return subprocess.Popen(
        [str(SSLPIPE), *args], cwd=cwd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


STEP_DIR = re.compile(r"step-(\d{8})$")


def checkpoint_steps(paths: list[str]) -> list[int]:
    """The steps of checkpoint folders ``.../step-XXXXXXXX``, sorted."""
    return sorted(int(m.group(1)) for p in paths if (m := STEP_DIR.search(p.rstrip("/"))))


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def quiet_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI run: telemetry off, and the session's Prefect test server (from
    the ``prefect_server`` fixture) so that the CLI does not start a temporary one of its own."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    env.update(RAY_USAGE_STATS_ENABLED="0", PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env
