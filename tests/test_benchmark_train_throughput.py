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


# A full smoke run of the script (`--quick`: Ray start, two Ray Train workers, a plain loop) takes about a
# minute on a 2-core machine, too much of CI's budget; run it by hand after changing the script.


@pytest.mark.parametrize(
    ("text", "layout"), [("2x1", (2, 1, None, None)), ("1x2:0", (1, 2, 0, None)), ("4X8:3:10", (4, 8, 3, 10))]
)
def test_layouts_name_workers_cpus_and_optionally_loaders(text: str, layout: tuple[int, ...]) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from train_throughput import parse_layout
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert parse_layout(text) == layout
    with pytest.raises(Exception, match="WORKERSxCPUS"):
        parse_layout("2by1")
    with pytest.raises(Exception, match="WORKERSxCPUS"):
        parse_layout("1x2:1:10:3")
