"""The whole pipeline on digits against real services: Prefect's test server, a local Ray with two
workers, MLflow on SQLite. Tiny budget: the point is that every stage really runs and connects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_sslpipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, prefect_server, local_ray):
    from flows.pipeline import pipeline
    from sslcore.config import load_config

    work = tmp_path_factory.mktemp("e2e")
    cfg = load_config(
        None,
        [f"work_dir={work}", "train.epochs=2", "train.max_steps_per_epoch=2", "train.batch_size=64"],
    )
    summary = pipeline(config=cfg)
    return cfg, summary


def test_shards_hold_every_digit(pipeline_run) -> None:
    cfg, summary = pipeline_run
    assert sum(summary.samples.values()) == 1797
    record = json.loads((cfg.work_path / "records" / "ingest.json").read_text())
    manifest = json.loads(Path(record["manifest_path"]).read_text())
    shard_total = sum(s["samples"] for split in manifest["splits"].values() for s in split["shards"])
    assert shard_total == 1797
    assert set(manifest["splits"]) == {"train", "test"}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            assert (Path(record["shard_folder"]) / shard["name"]).stat().st_size == shard["bytes"]


def test_flow_and_every_task_run_completed(pipeline_run) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.utilities.asyncutils import run_coro_as_sync

    _, summary = pipeline_run

    async def read():
        async with get_client() as client:
            flow_run = await client.read_flow_run(summary.flow_run_id)
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
            return flow_run, tasks

    flow_run, task_runs = run_coro_as_sync(read())
    assert flow_run.state is not None and flow_run.state.is_completed()
    names = sorted(t.name.rsplit("-", 1)[0] for t in task_runs)
    assert names == ["evaluate", "ingest", "pretrain", "register"]
    assert all(t.state is not None and t.state.is_completed() for t in task_runs)


def test_training_ran_on_two_ray_workers_and_checkpointed(pipeline_run) -> None:
    cfg, _ = pipeline_run
    record = json.loads((cfg.work_path / "records" / "pretrain.json").read_text())
    assert record["epochs"] == 2 and record["steps"] == 4
    assert all(np.isfinite(h["loss"]) and h["images_per_s"] > 0 for h in record["history"])
    checkpoints = sorted(p.name for p in Path(record["storage_path"], record["run_name"]).glob("step-*"))
    assert checkpoints == ["step-00000002", "step-00000004"]  # one per epoch of 2 steps
    assert sorted(int(w["rank"]) for w in record["workers"]) == [0, 1]
    assert all(0.0 <= h["knn_top1"] <= 1.0 for h in record["history"]), "the kNN monitor runs by default"


def test_model_version_with_candidate_alias(pipeline_run) -> None:
    from mlflow.tracking import MlflowClient

    _, summary = pipeline_run
    reg = summary.registered
    client = MlflowClient(reg.tracking_uri)
    version = client.get_model_version_by_alias(reg.model_name, "candidate")
    assert str(version.version) == reg.version
    assert version.tags["sslpipe.prefect_flow_run_id"] == summary.flow_run_id
    assert len(version.tags["sslpipe.manifest_fingerprint"]) == 64
    run = client.get_run(reg.run_id)
    assert run.data.params["train.epochs"] == "2"
    assert summary.headline == "digits/ssl/knn_k20_top1"
    assert summary.baseline == "digits/random_init/knn_k20_top1"
    for key in (summary.headline, summary.baseline, "digits/ssl/linear_top1", "digits/pixels/knn_k20_top1"):
        assert run.data.metrics[key] == pytest.approx(summary.metrics[key])
    artifacts = {f.path for f in client.list_artifacts(reg.run_id, "plots")}
    assert {"plots/training_curves.png", "plots/digits_tsne.png", "plots/digits_confusion.png",
            "plots/augmented_views.png"} <= artifacts  # fmt: skip


def _digits(n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    images = load_digits().images[:n]
    return np.round(images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (n, 8, 8, 1)


def test_pyfunc_embeds_uint8_images(pipeline_run) -> None:
    import mlflow

    _, summary = pipeline_run
    mlflow.set_tracking_uri(summary.registered.tracking_uri)
    model = mlflow.pyfunc.load_model(summary.registered.model_uri)
    gray = model.predict(_digits(5))
    assert gray.shape == (5, 512) and gray.dtype == np.float32 and np.isfinite(gray).all()
    rgb = model.predict(np.repeat(_digits(5), 3, axis=-1))
    np.testing.assert_allclose(gray, rgb, rtol=1e-5, atol=1e-5)
    odd = model.predict(np.random.default_rng(0).integers(0, 255, (3, 40, 23, 3), dtype=np.uint8))
    assert odd.shape == (3, 512)


def test_embed_command_writes_npy(pipeline_run, tmp_path: Path) -> None:
    import mlflow

    cfg, summary = pipeline_run
    paths = []
    for i, image in enumerate(_digits(4)):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(image[..., 0], mode="L").save(paths[-1])
    out = tmp_path / "emb.npy"
    result = run_sslpipe(
        "embed", "--model", summary.registered.model_uri, "--set", f"work_dir={cfg.work_dir}",
        "-o", str(out), *map(str, paths), cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    emb = np.load(out)
    mlflow.set_tracking_uri(summary.registered.tracking_uri)
    expected = mlflow.pyfunc.load_model(summary.registered.model_uri).predict(_digits(4))
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)
