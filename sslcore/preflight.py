"""Cheap checks that run before any expensive work (Ray, training, MLflow)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from sslcore.config import (
    DigitsSource,
    FashionMnistSource,
    FolderSource,
    PipelineConfig,
    ShardsSource,
    Source,
    StorageConfig,
)
from sslcore.data.ingest import check_source
from sslcore.data.manifest import read_manifest
from sslcore.data.sources import ShardImages
from sslcore.evaluation.plan import dataset_names, headline_metric, is_labelled_metric, protocols_for
from sslcore.resources import available_cpus


class PreflightError(ValueError):
    """The configuration cannot run on this machine; the message names the fix."""


# The checks (config JSON, local_ray, check_data) that passed in the current :func:`preflight_scope`,
# or None outside one. The JSON masks secrets: they change no check's outcome here.
_PASSED: ContextVar[set[tuple[str, bool, bool]] | None] = ContextVar("sslpipe_preflight_passed", default=None)


@contextmanager
def preflight_scope() -> Iterator[None]:
    """Within this scope a :func:`preflight` that passed is not run again for the same config and the
    same checks. ``sslpipe`` runs its commands in one: the command checks before it starts Prefect,
    and the flow's own preflight (which a deployment run needs) then skips the repeat."""
    token = _PASSED.set(set())
    try:
        yield
    finally:
        _PASSED.reset(token)


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


@dataclass(frozen=True)
class PlannedDataset:
    """One dataset the evaluate stage will score, as far as it is known before ingest."""

    name: str
    labelled: bool | None  # None: decided after ingest (from the shards' labels)
    protocols: tuple[str, ...]  # the families that run if it is labelled (label-free ones if not)

    def line(self) -> str:
        state = {True: "labelled", False: "no labels", None: "labels decided after ingest"}[self.labelled]
        text = f"evaluation: {self.name} ({state}): {', '.join(self.protocols)}"
        return text + (" (label-free ones only if it has no labels)" if self.labelled is None else "")


def _peek_labelled(source: ShardsSource, storage: StorageConfig | None) -> bool | None:
    """Webdataset shards: label names in a manifest beside them, or a ``cls`` member in the first
    sample of the first shard; None when the shards cannot be read cheaply."""
    shards = ShardImages(source, storage)
    try:
        if shards.label_names():
            return True
        units = shards.units(1)
        if not units:
            return None
        first = next(iter(shards.read_unit(units[0])), None)
    except (OSError, ValueError):
        return None
    return None if first is None or first.reject is not None else first.label is not None


def source_labelled(source: Source, storage: StorageConfig | None = None, *, read: bool = True) -> bool | None:
    """Whether a source's shards will carry labels, known before ingest where the config says so."""
    if isinstance(source, DigitsSource | FashionMnistSource):
        return True
    if isinstance(source, FolderSource):
        return source.labels != "none"
    return _peek_labelled(source, storage) if read else None


def evaluation_plan(cfg: PipelineConfig, *, read_data: bool = True) -> list[PlannedDataset]:
    """The ingested data first, then every ``eval.datasets`` entry: name, labelled, protocols.

    With ``read_data`` a webdataset source's first sample and an entry's shard manifest are read
    to tell whether they carry labels; without, those stay None (decided after ingest).
    """
    names = dataset_names(cfg)
    labelled = [source_labelled(cfg.ingest.source, cfg.storage, read=read_data)]
    for d in cfg.eval.datasets:
        if d.source is not None:
            labelled.append(source_labelled(d.source, cfg.storage, read=read_data))
        elif read_data and d.path is not None:
            labelled.append(read_manifest(d.path, cfg.storage).num_classes >= 2)
        else:
            labelled.append(None)
    return [
        PlannedDataset(name, known, protocols_for(cfg.eval, known is not False))
        for name, known in zip(names, labelled, strict=True)
    ]


def check_promotion_metrics(cfg: PipelineConfig, plan: list[PlannedDataset]) -> None:
    """A promotion gate on a labelled metric cannot pass when no dataset has labels: fail now, not
    after the training budget was spent."""
    if any(d.labelled is not False for d in plan):
        return
    headline = headline_metric(cfg.eval, [(d.name, False) for d in plan])
    fix = f"a label-free metric ({headline}, or a health_* metric) or add a labelled eval.datasets entry"
    p = cfg.promotion
    if p.primary is not None and is_labelled_metric(p.primary):
        raise PreflightError(
            f"promotion.primary={p.primary} needs labels but no evaluation dataset has any: "
            f"set promotion.primary to {fix}"
        )
    for guard in p.guards or ():
        if is_labelled_metric(guard.metric):
            raise PreflightError(
                f"promotion.guards metric {guard.metric} needs labels but no evaluation dataset has any: guard {fix}"
            )


def print_plan(cfg: PipelineConfig, plan: list[PlannedDataset]) -> None:
    for d in plan:
        print(d.line())
    if all(d.labelled is False for d in plan):
        headline = headline_metric(cfg.eval, [(d.name, False) for d in plan])
        print(
            f"evaluation: no labelled evaluation, label-free protocols only (headline {headline}); "
            "add eval.datasets for kNN/linear probes"
        )


def preflight(cfg: PipelineConfig, *, local_ray: bool, check_data: bool = True) -> None:
    """Raise :class:`PreflightError` or ``SourceError`` with a one-line fix, before any work starts.

    With ``check_data`` the sources are checked (the ingested one and every ``eval.datasets``
    source) and the evaluation plan is printed: which datasets have labels and which protocols
    will score them. Inside a :func:`preflight_scope`, checks that passed there already are skipped.
    """
    from sslcore.methods import check_method_backbone

    passed, key = _PASSED.get(), (cfg.model_dump_json(), local_ray, check_data)
    if passed is not None and key in passed:
        return
    check_method_backbone(cfg)  # patch-based methods need a ViT: say so before anything starts
    if check_data:
        check_source(cfg.ingest, cfg.storage)
        for d in cfg.eval.datasets:
            if d.source is not None:
                check_source(cfg.ingest.model_copy(update={"source": d.source}), cfg.storage)
    plan = evaluation_plan(cfg, read_data=check_data)
    check_promotion_metrics(cfg, plan)
    if check_data:
        print_plan(cfg, plan)
    if local_ray:
        check_local_resources(cfg)
    if passed is not None:
        passed.add(key)
