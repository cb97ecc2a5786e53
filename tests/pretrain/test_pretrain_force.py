"""``--force pretrain`` on a real local Ray: a new Ray Train run beside the cached one, whose result
then replaces the cached one; and a stage over its time limit fails instead of hanging."""

from __future__ import annotations

from pathlib import Path

import pytest
from pretrain_helpers import fast_training, ingest_digits

from flows.pipeline import ingest_flow, pretrain_flow
from sslcore.config import load_config

pytestmark = pytest.mark.slow


def test_forced_pretrain_is_a_new_run_that_replaces_the_cached_result(
    tmp_path: Path, local_ray, prefect_server
) -> None:
    record = ingest_digits(tmp_path)
    one_worker = ["train.epochs=1", "train.max_steps_per_epoch=2", "ray.num_workers=1"]  # a quicker worker group
    cfg = load_config(None, fast_training(tmp_path, *one_worker)[1::2])
    first = pretrain_flow(cfg, record)
    cached = pretrain_flow(cfg, record, return_state=True)
    assert cached.result() == first, "unchanged inputs: the cached record"
    forced = pretrain_flow(cfg, record, force=True)
    assert forced.run_name.startswith(first.run_name + "-") and forced.run_name != first.run_name
    assert forced.steps == first.steps == 2 and forced.resumed_from == [], "trained from scratch"
    assert Path(forced.storage_path, forced.run_name).is_dir() and Path(first.storage_path, first.run_name).is_dir()
    assert pretrain_flow(cfg, record) == forced, "the forced result is what the cache answers now"


def test_a_stage_over_its_time_limit_fails(tmp_path: Path, prefect_server) -> None:
    cfg = load_config(None, [f"work_dir={tmp_path}", "flow.timeouts_s.ingest=0.05", "flow.retries.ingest=0"])
    state = ingest_flow(cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(TimeoutError, match=r"ingest|0\.05"):
        state.result()
