"""Collapse is an alert: a recipe that really collapses, on a real local Ray under Prefect.

SimCLR at ``train.lr=20`` with no warm-up collapses at once: the backbone's features of a batch
lie along one or two directions (std of the normalised embeddings about 1% of the healthy value,
effective rank about 2) and the loss sits at the uniform ``log(2B - 1)``. The default recipe, in the
other pretrain tests, never trips the guard.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pretrain_helpers import fast_training, ingest_digits

from flows.pipeline import pretrain_flow
from sslcore.config import load_config
from sslcore.health import TrainingCollapsed
from sslcore.storage import filesystem
from sslcore.train import checkpoint_state
from tasks.pretrain import COLLAPSE_EVENT, COLLAPSE_STOPPED_EVENT

pytestmark = pytest.mark.slow

COLLAPSING = ["train.lr=20", "train.warmup_epochs=0", "train.collapse_patience=2", "train.max_steps_per_epoch=3"]


def _events(name: str, resource: str, timeout: float = 30) -> list:
    """The Prefect server's events named ``name`` about ``resource`` (events arrive asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource]))
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            found = client.read_events(filter=flt, limit=50).events  # the server takes at most 50
        if found or time.monotonic() > deadline:
            return found
        time.sleep(1)


def test_on_collapse_stop_ends_the_run_early_keeps_its_checkpoint_and_fails_the_flow(
    tmp_path: Path, local_ray, prefect_server
) -> None:
    record = ingest_digits(tmp_path)
    cfg = load_config(None, fast_training(tmp_path, *COLLAPSING, "train.epochs=5", "train.on_collapse=stop")[1::2])
    state = pretrain_flow(cfg, record, return_state=True)
    assert state.is_failed(), "a collapsed run fails its flow"
    with pytest.raises(TrainingCollapsed, match=r"training stopped at epoch 2 \(step 6 of 15\).*collapse") as err:
        state.result()
    assert "train.on_collapse=stop" in str(err.value) and "checkpoint is kept" in str(err.value)
    run = Path(cfg.work_path, "ray_results")
    folders = sorted(run.glob("pretrain-*/step-*"))
    kept = checkpoint_state(filesystem(str(folders[-1]))[0], str(folders[-1]))
    assert kept is not None and kept.step == 6 and kept.stopped and kept.collapse_streak == 2
    assert not Path(cfg.work_path, "records", "pretrain.json").exists(), "no record for the next stage"
    resource = f"sslpipe.training-run.{folders[-1].parent.name}"
    assert _events(COLLAPSE_STOPPED_EVENT, resource), "the stop is a Prefect event"
    # Retrying the same recipe does not train on: it ends at the kept checkpoint with the same reason.
    again = pretrain_flow(cfg, record, return_state=True)
    with pytest.raises(TrainingCollapsed, match="training stopped at epoch 2"):
        again.result()
    assert sorted(run.glob("pretrain-*/step-*"))[-1] == folders[-1]


def test_on_collapse_warn_emits_an_event_and_goes_on_and_keep_best_registers_the_best_epoch(
    tmp_path: Path, local_ray, prefect_server
) -> None:
    from prefect.client.orchestration import get_client

    record = ingest_digits(tmp_path)
    overrides = [*COLLAPSING, "train.epochs=3", "train.keep_best=true", "train.knn_monitor_samples=300"]
    cfg = load_config(None, fast_training(tmp_path, *overrides)[1::2])
    state = pretrain_flow(cfg, record, return_state=True)
    result = state.result()
    assert result.steps == 9, "warn: training goes on to its plan"
    flagged = [h["collapse_warning"] for h in result.history]
    assert flagged[:2] == [1.0, 1.0], f"the recipe collapses at once: {result.history}"
    events = _events(COLLAPSE_EVENT, f"sslpipe.training-run.{result.run_name}")
    assert events and "possible representation collapse" in events[0].payload["message"]
    assert any(r.id == f"prefect.flow-run.{state.state_details.flow_run_id}" for r in events[0].related)
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["collapse-warning"]))
        )
    assert artifacts, "and an artifact in the flow run"
    # keep_best: the checkpoint handed on is the epoch with the best kNN monitor score
    scores = {int(h["step"]): h["knn_top1"] for h in result.history}
    best = max(scores, key=lambda s: (scores[s], -s))
    assert result.best_step == best and result.best_metric == "knn_top1"
    assert result.checkpoint_path.endswith(f"best-step-{best:08d}")
    assert result.last_checkpoint_path and result.last_checkpoint_path.endswith("step-00000009")
    assert checkpoint_state(filesystem(result.checkpoint_path)[0], result.checkpoint_path) is not None
