"""A bucket of unlabeled images, end to end, as a user runs it: ``sslpipe run`` on a folder of
images with no class sub-folders and no labels file, a real local Ray, a real ``mlflow server``
and the session's Prefect test server.

1. The first run is watched from the tracking server while it trains: its MLflow run exists and
   holds step, epoch and system metrics before the pretrain stage has finished. Then it is killed
   (the whole process tree, as a lost machine would end it).
2. Running it again resumes the training run from its newest checkpoint, logs into the same MLflow
   run (no second run), evaluates with the label-free protocols and registers the encoder as
   ``candidate``; the model card says that no labelled evaluation was possible.
3. Adding a small labelled ``eval.datasets`` folder (class sub-folders) beside the unlabeled source
   evaluates it with the labelled protocols too, and its kNN becomes the headline.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pretrain.pretrain_helpers import kill_tree, quiet_env, start_cli, wait_for

from conftest import SSLPIPE

pytestmark = pytest.mark.slow

SETTINGS = [
    "model.backbone=test_resnet",
    "model.image_size=16",
    "model.small_image_stem=false",
    "method.projection_hidden_dim=64",
    "method.projection_dim=32",
    "train.batch_size=64",
    "train.epochs=3",
    # 36 steps: the first run is seen training after its first epoch (step 12) and killed well
    # before its last step
    "train.max_steps_per_epoch=12",
    "train.checkpoint_every_steps=2",
    "train.log_every_steps=2",
    "train.knn_monitor_samples=200",
    "eval.plots=false",
    "flow.retry_delay_s=1",
]
MODEL = "unlabeled-encoder"


def _write_images(root: Path, *, subfolders: bool, limit: int | None = None) -> Path:
    """scikit-learn's digits as PNG files: flat (no labels anywhere) or in one folder per class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root.mkdir(parents=True)
    for i, (image, label) in enumerate(zip(digits.images[:limit], digits.target[:limit], strict=False)):
        folder = root / f"class_{label}" if subfolders else root
        folder.mkdir(exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8)).save(folder / f"img_{i:04d}.png")
    return root


def _args(work: Path, photos: Path, *extra: str) -> list[str]:
    settings = [f"work_dir={work}", "ingest.source.kind=folder", f"ingest.source.path={photos}",
                f"mlflow.model_name={MODEL}", *SETTINGS, *extra]  # fmt: skip
    return ["run", *[a for s in settings for a in ("--set", s)]]


def _live_runs(client, experiment: str = "sslpipe") -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string="tags.`sslpipe.live` = 'true'")


def test_an_unlabeled_folder_runs_end_to_end_with_live_tracking(tmp_path: Path, mlflow_server, prefect_server) -> None:
    from mlflow.tracking import MlflowClient

    photos = _write_images(tmp_path / "photos", subfolders=False)
    work = tmp_path / "work"
    env = quiet_env(MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    env.pop("RAY_ADDRESS", None)
    client = MlflowClient(mlflow_server.uri)

    # 1. watch the first run from the tracking server while it trains, then kill it
    log = tmp_path / "first.log"
    first = start_cli(*_args(work, photos), cwd=tmp_path, env=env, log=log)
    seen: set[str] = set()

    def training_is_visible() -> bool:
        # Two reads a poll (the run's latest metrics, not every metric's history): cheap enough to
        # catch the run between its first epoch and its last step.
        assert first.poll() is None, f"the first run ended early:\n{log.read_text()[-3000:]}"
        runs = _live_runs(client)
        if not runs:
            return False
        metrics = set(client.get_run(runs[0].info.run_id).data.metrics)
        checkpoints = list((work / "ray_results").glob("pretrain-*/step-*"))
        ready = {"train/loss", "train_loss"} <= metrics and any(k.startswith("system/") for k in metrics)
        if ready and checkpoints:
            seen.update(metrics)
            return True
        return False

    try:
        wait_for(training_is_visible, timeout=400, what="training metrics on the MLflow server", poll=0.5)
        assert not (work / "records" / "pretrain.json").exists(), "read while the pretrain stage still runs"
    finally:
        kill_tree(first)
    print("metrics on the server mid-run:", sorted(seen))
    for name in ("train/loss", "train/lr", "train/images_per_s", "train/data_wait_fraction"):
        assert name in seen, f"{name} is logged every train.log_every_steps steps: {sorted(seen)}"
    assert "train_retrieval_top1" in seen and "train_health_effective_rank" in seen, "epoch metrics, label-free"
    assert "system/cpu_utilization_percentage" in seen, "system metrics from the training side"
    (live,) = _live_runs(client)

    # 2. run again: it resumes the training run, in the same MLflow run, and registers the encoder
    second = subprocess.run([str(SSLPIPE), *_args(work, photos)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert "resuming from step" in out and f"MLflow run {live.info.run_id} continues" in out
    assert "evaluation: photos (no labels)" in out, "preflight says which protocols will run"
    runs = _live_runs(client)
    assert [r.info.run_id for r in runs] == [live.info.run_id], "one MLflow run for the training run"
    version = client.get_model_version_by_alias(MODEL, "candidate")
    assert version.run_id == live.info.run_id
    metrics = client.get_run(live.info.run_id).data.metrics
    for name in ("photos/ssl/retrieval_top1", "photos/random_init/retrieval_top1", "photos/ssl/health_rankme",
                 "photos/ssl/health_collapsed", "photos/ssl/health_alignment"):  # fmt: skip
        assert name in metrics, f"{name} missing from {sorted(metrics)}"
    assert not any("knn" in k or "linear" in k for k in metrics if k.startswith("photos/")), "no labels, no probes"
    assert len(client.get_metric_history(live.info.run_id, "train_epoch")) == 3, "each epoch logged once"
    assert "No labelled evaluation was possible" in (version.description or "")
    assert client.get_run(live.info.run_id).data.tags["sslpipe.headline_metric"] == "photos/ssl/retrieval_top1"

    # 3. a small labelled evaluation set beside the unlabeled pretraining data
    labelled = _write_images(tmp_path / "labelled", subfolders=True, limit=600)
    extra = f"eval.datasets=[{{name: sample, source: {{kind: folder, path: '{labelled}', labels: subfolder}}}}]"
    third = subprocess.run([str(SSLPIPE), *_args(work, photos, extra)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    out = third.stdout + third.stderr
    assert third.returncode == 0, out[-4000:]
    assert "evaluation: sample (labelled)" in out
    version = client.get_model_version_by_alias(MODEL, "candidate")
    run = client.get_run(version.run_id)
    assert run.data.tags["sslpipe.headline_metric"] == "sample/ssl/knn_k20_top1"
    assert {"sample/ssl/knn_k20_top1", "sample/random_init/linear_top1", "photos/ssl/retrieval_top1"} <= set(
        run.data.metrics
    )
