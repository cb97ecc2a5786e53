"""Cheap checks that run before any expensive work (Ray, training, MLflow)."""

from __future__ import annotations

import torch

from sslcore.config import PipelineConfig
from sslcore.data.ingest import check_source
from sslcore.resources import available_cpus


class PreflightError(ValueError):
    """The configuration cannot run on this machine; the message names the fix."""


def check_local_resources(cfg: PipelineConfig) -> None:
    """Workers must fit this machine when Ray runs locally (no ``ray.address``/``$RAY_ADDRESS``)."""
    need = cfg.ray.num_workers * cfg.ray.cpus_per_worker
    have = available_cpus()
    if need > have:
        raise PreflightError(
            f"ray.num_workers={cfg.ray.num_workers} x ray.cpus_per_worker={cfg.ray.cpus_per_worker} needs "
            f"{need} CPUs but this machine has {have}: lower ray.num_workers, or set ray.address "
            f"(or RAY_ADDRESS) to a cluster"
        )
    if cfg.ray.use_gpu and torch.cuda.device_count() < cfg.ray.num_workers:
        raise PreflightError(
            f"ray.use_gpu=true needs {cfg.ray.num_workers} GPUs but this machine has "
            f"{torch.cuda.device_count()}: set ray.use_gpu=false or point ray.address at a GPU cluster"
        )


def preflight(cfg: PipelineConfig, *, local_ray: bool, check_data: bool = True) -> None:
    """Raise :class:`PreflightError` or ``SourceError`` with a one-line fix, before any work starts."""
    from sslcore.methods import check_method_backbone

    check_method_backbone(cfg)  # patch-based methods need a ViT: say so before anything starts
    if check_data:
        check_source(cfg.ingest, cfg.storage)
    if local_ray:
        check_local_resources(cfg)
