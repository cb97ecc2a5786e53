"""Caching of stage results across flow runs, and the per-run options of the stage tasks.

A stage whose inputs are unchanged is not executed again: its result comes from the result storage
(``flow.result_storage``: a local folder or ``s3://``), keyed by a hash of exactly what the stage
reads:

| stage | key |
|---|---|
| ingest | source contents (listing, sizes, versions), ingest config, output, code; each `eval.datasets` source too |
| pretrain | Ray Train run name (data fingerprint, model/method/augment/train, workers), storage, code |
| evaluate | the checkpoint, model/method/augment/eval config, code |
| register | not cached: it is idempotent against MLflow itself, so every run reconciles with the registry |

"Code" is the package version and a hash of ``sslcore`` and ``tasks`` sources, so an upgrade
invalidates the cache. Results are stored as JSON (no pickle). A stage named in ``force`` runs again
and replaces the cached result.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.filesystems import RemoteFileSystem, WritableFileSystem

from sslcore.config import CACHED_STAGES, IngestConfig, PipelineConfig
from sslcore.data.ingest import ingest_fingerprint
from sslcore.data.manifest import MANIFEST_NAME
from sslcore.data.sources import open_source
from sslcore.storage import filesystem, is_file, is_remote, join, storage_errors, storage_options
from sslcore.train import META_FILE
from tasks.records import IngestRecord, PretrainRecord
from tasks.runtime import ray_storage_path

CODE_PACKAGES = ("sslcore", "tasks")


@functools.cache
def code_version() -> str:
    """The installed version plus a hash of the library and task sources."""
    h = hashlib.sha256()
    with contextlib.suppress(metadata.PackageNotFoundError):
        h.update(metadata.version("sslpipe").encode())
    root = Path(__file__).resolve().parent.parent
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _digest(stage: str, parts: dict[str, Any]) -> str:
    blob = json.dumps({"stage": stage, "code": code_version(), **parts}, sort_keys=True, default=str)
    return f"{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"


def _source_fingerprint(config: PipelineConfig, ingest: IngestConfig) -> str:
    return ingest_fingerprint(open_source(ingest.source, config.storage).fingerprint(), ingest)


def ingest_key(config: PipelineConfig) -> str:
    evals = {
        d.name: _source_fingerprint(config, config.ingest.model_copy(update={"source": d.source, "output": None}))
        if d.source is not None
        else f"path:{d.path}"
        for d in config.eval.datasets
    }
    parts = {"fingerprint": _source_fingerprint(config, config.ingest), "output": config.shard_dir}
    return _digest("ingest", parts | ({"eval_datasets": evals} if evals else {}))


def pretrain_key(config: PipelineConfig, ingest: IngestRecord) -> str:
    from tasks.pretrain import run_name_for

    return _digest("pretrain", {"run": run_name_for(config, ingest), "storage": ray_storage_path(config)})


def evaluate_key(config: PipelineConfig, trained: PretrainRecord) -> str:
    sections = config.model_dump(mode="json", include={"model", "method", "augment", "eval"})
    return _digest("evaluate", {"checkpoint": trained.checkpoint_path, "steps": trained.steps, **sections})


KEYS: dict[str, Callable[..., str]] = {"ingest": ingest_key, "pretrain": pretrain_key, "evaluate": evaluate_key}
assert tuple(KEYS) == CACHED_STAGES


@dataclass
class StageInputs(CachePolicy):
    """Prefect cache policy: the key of ``stage`` computed from the task's own arguments."""

    stage: str = "ingest"

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        fn = KEYS[self.stage]  # takes the task's leading arguments (config, upstream record), in order
        return fn(*list(inputs.values())[: fn.__code__.co_argcount])


SECRET_OPTIONS = ("key", "secret", "token")


def result_storage(config: PipelineConfig) -> Path | WritableFileSystem:
    """``flow.result_storage`` for Prefect: a local path, or an fsspec filesystem for ``s3://``.

    Prefect wants remote result storage saved as a block on its server. The saved block holds the
    URL and endpoint only; the instance this process uses carries the credentials from the config
    as well (none when they come from the environment or a profile), and they never reach Prefect.
    """
    url = config.result_storage
    if not is_remote(url):
        return Path(url).expanduser().resolve()
    options = storage_options(url, config.storage)
    public = {k: v for k, v in options.items() if k not in SECRET_OPTIONS}
    saved = RemoteFileSystem(basepath=url, settings=public)
    name = "sslpipe-results-" + hashlib.sha256(json.dumps([url, public], sort_keys=True).encode()).hexdigest()[:16]
    saved.save(name, overwrite=True)
    if public == options:
        return saved
    private = RemoteFileSystem(basepath=url, settings=options)
    private._block_document_id = saved._block_document_id  # the saved, credential-free document
    private._block_document_name = saved._block_document_name
    return private


def stage_options(config: PipelineConfig, stage: str, force: Iterable[str] = ()) -> dict[str, Any]:
    """``Task.with_options`` arguments for ``stage`` in this run: cache, result storage, retries, timeout."""
    retries = getattr(config.flow.retries, stage)
    options: dict[str, Any] = {
        "timeout_seconds": getattr(config.flow.timeouts_s, stage),
        "retries": retries,
        "retry_delay_seconds": [config.flow.retry_delay_s * 2**i for i in range(retries)],  # backoff
    }
    if stage not in KEYS or not config.flow.cache:
        return options | {"cache_policy": NO_CACHE}
    return options | {
        "cache_policy": StageInputs(stage=stage),
        "persist_result": True,
        "result_storage": result_storage(config),
        "result_serializer": "json",
        "refresh_cache": stage in tuple(force),
    }


def outputs_exist(record: Any, config: PipelineConfig) -> bool:
    """Whether what a (possibly cached) record points at is still there: shards, checkpoint."""
    if isinstance(record, IngestRecord):
        eval_manifests = [join(folder, MANIFEST_NAME) for folder in record.eval_datasets.values()]
        return all(_is_there(url, config) for url in [record.manifest_path, *eval_manifests])
    if isinstance(record, PretrainRecord):
        url = join(record.checkpoint_path, META_FILE)
    else:
        return True
    return _is_there(url, config)


def _is_there(url: str, config: PipelineConfig) -> bool:
    fs, path = filesystem(url, config.storage)
    # This runs in the flow, outside any task's retries: an S3 that cannot be reached is neither
    # taken for a missing output (which would run the stage again) nor a traceback, but one line.
    with storage_errors(url, config.storage, "checking the cached output"):
        return is_file(fs, path)
