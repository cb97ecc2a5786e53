"""Ingest stage: source -> validated webdataset shards + manifest."""

from __future__ import annotations

import time
from functools import partial

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from sslcore.config import PipelineConfig
from sslcore.data.ingest import IngestResult
from sslcore.data.ingest import ingest as run_ingest
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
        ),
        description="Shards and rejects of this run",
    )
    return record


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
