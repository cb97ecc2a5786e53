"""Ingest stage: source -> validated webdataset shards + manifest."""

from __future__ import annotations

import time

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from sslcore.config import PipelineConfig
from sslcore.data.ingest import ingest as run_ingest
from tasks.errors import retry_unless_user_error
from tasks.records import IngestRecord


@task(
    name="ingest",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
    tags=["sslpipe", "ingest"],
)
def ingest(config: PipelineConfig) -> IngestRecord:
    """Write (or reuse) the shards for ``config.ingest``."""
    start = time.perf_counter()
    with tqdm(desc="ingest", unit="img", mininterval=1.0) as bar:
        result = run_ingest(
            config.ingest, config.shard_dir, progress=lambda done, rejected: _tick(bar, done, rejected)
        )
    m = result.manifest
    record = IngestRecord(
        shard_folder=str(result.folder),
        manifest_path=str(result.folder / "manifest.json"),
        fingerprint=m.fingerprint,
        samples={name: split.samples for name, split in m.splits.items()},
        num_classes=m.num_classes,
        rejected=sum(m.rejects.values()),
        reused=result.reused,
        duration_s=time.perf_counter() - start,
    )
    create_markdown_artifact(
        key="ingest-summary",
        markdown=(
            f"### Ingest\n{'Reused complete shards' if result.reused else 'Wrote shards'} to "
            f"`{result.folder}`\n\n| split | samples | shards |\n|---|---|---|\n"
            + "".join(f"| {n} | {s.samples} | {len(s.shards)} |\n" for n, s in m.splits.items())
            + f"\nRejected: {record.rejected} {dict(m.rejects) or ''}\n"
        ),
        description="Shards and rejects of this run",
    )
    return record


def _tick(bar: tqdm, done: int, rejected: int) -> None:
    bar.update(done - bar.n)
    if rejected:
        bar.set_postfix(rejected=rejected, refresh=False)
