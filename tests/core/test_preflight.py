"""sslcore.preflight: cheap checks that fail before Ray starts, with the fix in the message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslcore import preflight as preflight_module
from sslcore.config import PipelineConfig, load_config
from sslcore.data.sources import SourceError
from sslcore.preflight import PreflightError, check_local_resources, preflight


@pytest.fixture()
def cpus(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Pretend the machine has ``cpus[0]`` CPUs and no GPU."""
    have = [64]
    monkeypatch.setattr(preflight_module, "available_cpus", lambda: have[0])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    return have


def _cfg(*overrides: str) -> PipelineConfig:
    return load_config(None, ["train.batch_size=64", *overrides])


def test_more_workers_than_cpus(cpus: list[int]) -> None:
    cpus[0] = 3
    with pytest.raises(PreflightError) as info:
        check_local_resources(_cfg("ray.num_workers=2", "ray.cpus_per_worker=2"))
    message = str(info.value)
    assert "needs 4 CPUs but this machine has 3" in message
    assert "lower ray.num_workers" in message and "ray.address" in message


def test_workers_that_fit(cpus: list[int]) -> None:
    cpus[0] = 4
    check_local_resources(_cfg("ray.num_workers=2", "ray.cpus_per_worker=2"))


def test_use_gpu_without_gpus(cpus: list[int]) -> None:
    with pytest.raises(PreflightError, match=r"ray\.use_gpu=true needs 2 GPUs but this machine has 0") as info:
        check_local_resources(_cfg("ray.num_workers=2", "ray.use_gpu=true"))
    assert "set ray.use_gpu=false" in str(info.value)


def test_remote_ray_skips_the_local_checks(cpus: list[int]) -> None:
    cpus[0] = 1
    preflight(_cfg("ray.num_workers=8", "ray.use_gpu=true"), local_ray=False, check_data=False)
    with pytest.raises(PreflightError):
        preflight(_cfg("ray.num_workers=8"), local_ray=True, check_data=False)


def test_data_check_reports_a_missing_source(cpus: list[int], tmp_path: Path) -> None:
    cfg = _cfg("ingest.source.kind=folder", f"ingest.source.path={tmp_path / 'missing'}")
    with pytest.raises(SourceError, match="does not exist"):
        preflight(cfg, local_ray=True)
