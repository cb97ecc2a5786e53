"""Ingest stage: source -> validated webdataset shards + manifest; the same for every
``eval.datasets`` source, written under ``<shard_dir>-eval/<name>``."""

from __future__ import annotations

import time
from functools import partial

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from sslcore.config import EvalDataset, PipelineConfig
from sslcore.data.ingest import IngestResult
from sslcore.data.ingest import ingest as run_ingest
from sslcore.evaluation.plan import dataset_names
from sslcore.storage import join
from tasks.errors import retry_unless_user_error
from tasks.faults import inject
from tasks.records import IngestRecord


@task(
    name="ingest",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
    tags=["sslpipe", "ingest"],
)
def ingest(config: PipelineConfig, verify: bool = False) -> IngestRecord:
    """Write (or reuse) the shards for ``config.ingest``; ``verify`` (``--force ingest``) checks
    every reused shard against its manifest hash and writes the output again if one differs."""
    inject("ingest")
    start = time.perf_counter()
    with tqdm(desc="ingest", unit="img", mininterval=1.0) as bar:
        result = run_ingest(
            config.ingest, config.shard_dir, progress=partial(_tick, bar), storage=config.storage, verify=verify
        )
    eval_results = ingest_eval_datasets(config, verify=verify)
    m = result.manifest
    record = IngestRecord(
        shard_folder=result.folder,
        manifest_path=join(result.folder, "manifest.json"),
        fingerprint=m.fingerprint,
        samples={name: split.samples for name, split in m.splits.items()},
        num_classes=m.num_classes,
        rejected=sum(m.rejects.values()),
        duplicates=m.duplicates,
        reused=result.reused,
        resumed=result.resumed,
        eval_datasets=eval_folders(config, eval_results),
        duration_s=time.perf_counter() - start,
    )
    create_markdown_artifact(
        key="ingest-summary",
        markdown=(
            f"### Ingest\n{_verb(result)} `{result.folder}`\n\n"
            "| split | samples | shards |\n|---|---|---|\n"
            + "".join(f"| {n} | {s.samples} | {len(s.shards)} |\n" for n, s in m.splits.items())
            + f"\n{m.inputs} inputs; rejected {record.rejected} {dict(m.rejects) or ''}; "
            f"exact duplicates dropped: {m.duplicates}. Rejects report: `{join(result.folder, 'rejects.jsonl')}`\n"
            + _eval_summary(eval_results)
        ),
        description="Shards and rejects of this run",
    )
    return record


def eval_shard_root(config: PipelineConfig, name: str) -> str:
    """Where an ``eval.datasets`` source is ingested: ``<shard_dir>-eval/<name>`` (local or s3://),
    beside the pretraining shards and never inside them."""
    return join(config.shard_dir.rstrip("/") + "-eval", name)


def ingest_eval_datasets(config: PipelineConfig, verify: bool = False) -> dict[str, IngestResult]:
    """Ingest every ``eval.datasets`` entry given by a source, with the pretraining data's ingest
    settings (validation, dedup, split, resume), each into its own folder."""
    dataset_names(config)  # a name clash fails before any work
    results = {}
    for d in config.eval.datasets:
        if d.source is None:
            continue
        cfg = config.ingest.model_copy(update={"source": d.source, "output": None})
        with tqdm(desc=f"ingest {d.name}", unit="img", mininterval=1.0) as bar:
            results[d.name] = run_ingest(
                cfg, eval_shard_root(config, d.name), progress=partial(_tick, bar), storage=config.storage,
                verify=verify,
            )  # fmt: skip
    return results


def eval_folders(config: PipelineConfig, ingested: dict[str, IngestResult]) -> dict[str, str]:
    """Shard folder per ``eval.datasets`` entry: the ingested one for a source, the path as given."""
    return {d.name: ingested[d.name].folder if d.source is not None else _path(d) for d in config.eval.datasets}


def _path(d: EvalDataset) -> str:
    assert d.path is not None  # EvalDataset holds exactly one of path and source
    return d.path


def _eval_summary(ingested: dict[str, IngestResult]) -> str:
    if not ingested:
        return ""
    rows = "".join(
        f"| {name} | {r.folder} | {r.manifest.num_classes} | "
        + ", ".join(f"{s} {info.samples}" for s, info in r.manifest.splits.items())
        + " |\n"
        for name, r in ingested.items()
    )
    return "\n#### Evaluation datasets\n| name | shards | classes | samples |\n|---|---|---|---|\n" + rows


def _verb(result: IngestResult) -> str:
    if result.reused:
        return "Reused the complete shards in"
    if result.resumed:
        return f"Resumed ({result.resumed} samples already in complete shards) and finished"
    return "Wrote shards to"


def _tick(bar: tqdm, done: int, rejected: int, total: int | None) -> None:
    if total is not None and bar.total != total:
        bar.total = total
    bar.update(done - bar.n)
    if rejected:
        bar.set_postfix(rejected=rejected, refresh=False)
