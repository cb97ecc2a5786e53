"""The pretrain stage on an existing Ray cluster, found by address: a head node (``ray start
--head``) and a second node process (``ray start --address``), both on loopback, with token
authentication on as a real cluster should have it. The stage must place its two workers on both
nodes (one CPU each) and check that every node sees its local storage before training.

The run also uses what a cloud run would: augmentations made on the device, a time budget (too
small for more than one epoch, so the run is re-planned to one) and the kNN monitor."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from pretrain_helpers import fast_training, ingest_digits, quiet_env

from conftest import SSLPIPE, free_port, require_private_mounts
from tasks.records import PretrainRecord

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).with_name("ray")


def _kill_processes_of(temp_dir: str) -> None:
    """Stop exactly this cluster's processes (``ray stop`` would stop every Ray on the machine)."""
    victims = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or ()):
                victims.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(victims, timeout=30)


@pytest.fixture
def two_node_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """``(address, environment)`` of a fresh two-node Ray cluster, one CPU per node."""
    temp_dir = tempfile.mkdtemp(prefix="sslray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = quiet_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run(
            [str(RAY), "start", "--head", f"--port={port}", *common, f"--temp-dir={temp_dir}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}"],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [str(RAY), "start", f"--address={address}", *common, f"--dashboard-agent-listen-port={free_port()}"],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield address, env
    finally:
        _kill_processes_of(temp_dir)


def test_pretrain_by_address_runs_workers_on_both_nodes(tmp_path: Path, two_node_cluster, prefect_server) -> None:
    address, env = two_node_cluster
    ingest_digits(tmp_path)
    args = fast_training(
        tmp_path,
        "train.epochs=3",
        "train.max_steps_per_epoch=4",
        "augment.on_device=true",
        "train.time_budget_s=0.01",
        "train.knn_monitor_samples=200",
    )
    done = subprocess.run(
        [str(SSLPIPE), "pretrain", *args], cwd=tmp_path, env={**env, "RAY_ADDRESS": address},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "Started a local Ray instance" not in done.stdout + done.stderr, "must join the cluster, not start one"

    record = PretrainRecord.model_validate_json((tmp_path / "records" / "pretrain.json").read_text())
    assert record.steps == 4 and record.epochs == 1, "the time budget re-plans the run to one epoch"
    assert "4 steps (1.00 of 3 epochs), schedules re-planned" in done.stdout + done.stderr
    (epoch,) = record.history
    assert 0.0 <= epoch["knn_top1"] <= 1.0
    assert sorted(int(w["rank"]) for w in record.workers) == [0, 1]
    nodes = {w["node_id"] for w in record.workers}
    assert len(nodes) == 2, f"both workers ran on one node: {record.workers}"
    assert set(record.startup) >= {"ray_connect_s", "worker_group_s", "first_batch_s", "total_s"}

    # A third node in its own mount namespace, where the test's folder is an empty tmpfs: it cannot
    # see the shards or the checkpoints, and the stage must say so before any work starts.
    require_private_mounts(tmp_path)
    blind = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs none "{tmp_path}" && exec "{RAY}" start --address={address} --node-ip-address=127.0.0.1 '
         f"--num-cpus=1 --disable-usage-stats --dashboard-agent-listen-port={free_port()}"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert blind.returncode == 0, blind.stderr[-2000:]
    refused = subprocess.run(  # --force: the finished run above would come from the cache, untouched by Ray
        [str(SSLPIPE), "pretrain", "--force", *args], cwd=tmp_path, env={**env, "RAY_ADDRESS": address},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert refused.returncode == 2, (refused.stdout + refused.stderr)[-4000:]
    assert "is a local path that Ray node(s) " in refused.stderr and " cannot see" in refused.stderr
    assert "use an s3:// URL" in refused.stderr


def test_only_a_local_ray_goes_without_the_preemption_watcher() -> None:
    from tasks.ray_train import ray_runtime_env

    local, cluster = ray_runtime_env(local=True)["env_vars"], ray_runtime_env(local=False)["env_vars"]
    assert local["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"  # no drained nodes on one machine
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in cluster  # spot nodes on a cluster: keep Ray's default
    assert {k: v for k, v in local.items() if k != "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"} == cluster
