"""``benchmarks/time_to_accuracy.py`` end to end on generated IDX files (CI has no Debian Fashion-MNIST):
one ingest, two budgets each trained by a real Ray Train stage run and scored by kNN next to raw pixels,
the printed table, ``curve.json``, the PNG, and the MLflow run (SQLite) holding both and a metric point
per budget. The accuracies are not checked (random images, seconds of training)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, random_fashion_idx


def test_a_budget_that_is_not_positive_is_refused_before_any_work(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "time_to_accuracy.py"),
            "--budgets",
            "5",
            "0",
            "--work",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "--budgets must be positive minutes" in out.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_the_curve_trains_one_run_per_budget_and_logs_table_plot_and_mlflow_run(tmp_path: Path) -> None:
    data = random_fashion_idx(tmp_path / "idx", train=256, test=64)
    work = tmp_path / "work"
    tracking = f"sqlite:///{work / 'mlflow.db'}"  # explicit: the suite's $MLFLOW_TRACKING_URI may point elsewhere
    overrides = ["train.batch_size=64", "train.knn_monitor_samples=0", "model.image_size=16", "ray.num_workers=1"]
    overrides.append(f"mlflow.tracking_uri={tracking}")
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "time_to_accuracy.py"), "--budgets", "0.06", "0.03"]
        + ["--path", str(data), "--work", str(work)]
        + [arg for o in overrides for arg in ("--set", o)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = re.findall(
        r"^\s+(\d+(?:\.\d+)?)\s+(\d+\.\d\d)\s+\d+\.\d\d\s+\d+\s+(\d\.\d{4})\s+\d\.\d{4}\s+[-+]\d\.\d{4}\s+\S+$",
        out.stdout,
        re.MULTILINE,
    )
    assert [b for b, _, _ in table] == ["0.03", "0.06"]  # sorted, one row per budget

    rows = json.loads((work / "curve.json").read_text())["rows"]
    assert [r["budget_min"] for r in rows] == [0.03, 0.06]
    assert all(r["steps"] >= 1 and r["pixels_knn_k20_top1"] is not None for r in rows)
    assert rows[0]["steps"] <= rows[1]["steps"]  # a larger budget never plans fewer steps
    assert [f"{r['knn_k20_top1']:.4f}" for r in rows] == [acc for _, _, acc in table]
    png = work / "time_to_accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = MlflowClient(tracking)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("sslpipe").experiment_id], "attributes.run_name = 'time-to-accuracy'"
    )
    points = client.get_metric_history(run.info.run_id, "knn_k20_top1")
    assert sorted((p.step, round(p.value, 4)) for p in points) == [
        (2, round(rows[0]["knn_k20_top1"], 4)),
        (4, round(rows[1]["knn_k20_top1"], 4)),
    ]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"curve.json", "time_to_accuracy.png"}
