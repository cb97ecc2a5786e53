"""The pipeline's run summary (a Prefect markdown artifact): what it says and where it links."""

from __future__ import annotations

import pytest

from flows.pipeline import RunSummary, results_table, summary_markdown
from tasks.records import RegisterRecord

METRICS = {
    "digits/ssl/knn_k20_top1": 0.91,
    "digits/random_init/knn_k20_top1": 0.75,
    "digits/pixels/knn_k20_top1": 0.88,
    "digits/ssl/linear_top1": 0.93,
    "digits/ssl/knn_k20_vs_pixels_p": 3.14e-07,
    "digits/test_samples": 353.0,
}


def _summary(tracking_uri: str, champion: str | None = None) -> RunSummary:
    registered = RegisterRecord(
        tracking_uri=tracking_uri, experiment_id="7", run_id="abc123", model_name="sslpipe-encoder",
        version="3", alias="candidate", model_uri="models:/sslpipe-encoder@candidate", duration_s=1.0,
    )  # fmt: skip
    return RunSummary(
        flow_run_id="f", flow_run_url="http://127.0.0.1:4200/runs/flow-run/f",
        stage_seconds={"ingest": 1.0, "pretrain": 2.0, "evaluate": 3.0, "register": 4.0},
        samples={"train": 1444, "test": 353}, rejected=2, duplicates=1, metrics=METRICS,
        headline="digits/ssl/knn_k20_top1", baseline="digits/random_init/knn_k20_top1", images_per_s=512.0,
        steps=40, registered=registered, mlflow_ui="open x", champion=champion,
        champion_headline=0.9 if champion else None,
    )  # fmt: skip


def test_results_table_puts_ssl_next_to_its_baselines() -> None:
    table = results_table(METRICS)
    assert table.splitlines()[0] == "| dataset | metric | ssl | pixels | random_init |"
    assert "| digits | knn_k20_top1 | 0.9100 | 0.8800 | 0.7500 |" in table
    assert "| digits | linear_top1 | 0.9300 |  |  |" in table
    assert "| digits | knn_k20_vs_pixels_p | 3.1e-07 |  |  |" in table  # not rounded away to 0.0000
    assert "test_samples" not in table


@pytest.mark.parametrize("champion", [None, "2"])
def test_summary_counts_results_and_promotion(champion: str | None) -> None:
    text = summary_markdown(_summary("sqlite:///x/mlflow.db", champion))
    assert "1797 images (train 1444, test 353), 2 rejected, 1 duplicates dropped" in text
    assert "40 steps at 512 images/s" in text
    assert "`models:/sslpipe-encoder@candidate` = version 3" in text
    assert ("no champion yet" in text) == (champion is None)
    if champion:
        assert "Champion: version 2, `digits/ssl/knn_k20_top1` 0.9000" in text
    assert "[Prefect flow run](http://127.0.0.1:4200/runs/flow-run/f)" in text
    assert "[MLflow run]" not in text, "no UI to link to for a SQLite store"


def test_summary_links_the_tracking_server() -> None:
    text = summary_markdown(_summary("http://127.0.0.1:5000/"))
    assert "[MLflow run](http://127.0.0.1:5000/#/experiments/7/runs/abc123)" in text
    assert "[model version](http://127.0.0.1:5000/#/models/sslpipe-encoder/versions/3)" in text
