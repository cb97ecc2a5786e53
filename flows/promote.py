"""The promotion flow: champion/challenger gates in MLflow, or a rollback."""

from __future__ import annotations

from prefect import flow

from sslcore.config import PipelineConfig
from tasks.caching import stage_options
from tasks.promote import PromotionRecord, promote_task
from tasks.runtime import quiet_telemetry


@flow(name="sslpipe-promote", log_prints=True)
def promote_flow(config: PipelineConfig = PipelineConfig(), rollback: bool = False) -> PromotionRecord:  # noqa: B008
    """Move `champion` to the candidate if it passes every gate; with rollback, restore the previous one."""
    quiet_telemetry()
    # retries and their backoff from flow.retries.promote / flow.retry_delay_s, like every stage
    record = promote_task.with_options(**stage_options(config, "promote"))(config, rollback)
    print(f"{record.decision}: {record.reason} (champion {record.champion_before} -> {record.champion_after})")
    return record
