"""benchmarks/train_throughput.py runs end to end (plain loop and the Ray Train stage) and prints its
table; benchmarks/gpu.sh is valid bash; --device cuda refuses clearly where there is no GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "train_throughput.py"
ROW = re.compile(r"(plain|sslpipe \d+x\d+ K=\d+)\s+([\d.]+)\s+(\S+)\s+([\d.]+)\s+([\d.]+)x")


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_gpu_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_a_gpu_fails_with_a_clear_message():
    result = run_script("--device", "cuda", timeout=120)
    assert result.returncode == 2
    assert "--device cuda" in result.stderr and "no CUDA device" in result.stderr


@pytest.mark.slow
def test_quick_run_prints_positive_rates_and_startup():
    # About 40 s on an idle 2-core machine, most of it Ray's start.
    args = ("--quick", "--models", "vit", "--batch-size", "16", "--warmup", "1", "--steps", "1", "--repeats", "1")
    result = run_script(*args, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    rows = {m.group(1): m for m in ROW.finditer(out)}
    assert set(rows) == {"plain", "sslpipe 2x1 K=1"}, out
    for row in rows.values():
        assert float(row.group(2)) > 0  # img/s
        assert float(row.group(4)) > 0  # TFLOP/s
    assert float(rows["plain"].group(5)) == 1.0
    assert float(rows["sslpipe 2x1 K=1"].group(3)) > 0  # wall img/s
    assert re.search(r"test_vit\s+sslpipe 2x1 K=1\s+[\d.]+\s+wall [\d.]+", out), out
    startup = re.search(r"test_vit\s+sslpipe 2x1 K=1((?:\s+[\d.]+){7})\n", out)
    assert startup is not None, out
    ray_connect, worker_group, first_batch, total, *_ = (float(x) for x in startup.group(1).split())
    assert min(ray_connect, worker_group, total) > 0
    assert total == pytest.approx(ray_connect + worker_group + first_batch, abs=0.02)
