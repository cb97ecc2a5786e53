"""Training-run records with a real checkpoint and controlled metric values, for registry tests."""

from __future__ import annotations

from pathlib import Path

import torch

from sslcore.config import PipelineConfig, load_config
from sslcore.data.ingest import ingest
from sslcore.methods import build_method
from sslcore.train import TrainState, build_optimizer, save_state
from tasks.records import EvaluateRecord, IngestRecord, PretrainRecord


def config(work: Path, *extra: str) -> PipelineConfig:
    # retries 5, 10, 20 s apart: room for a restarted MLflow server to come back, without the
    # default's 10, 20, 40 s
    # 16 px: the evaluations (and their 768-value raw-pixel baseline) cost a quarter of the default 32 px
    overrides = [f"work_dir={work}", "model.backbone=resnet10t", "model.image_size=16", "flow.retry_delay_s=5"]
    return load_config(None, [*overrides, *extra])


def training_run(
    cfg: PipelineConfig,
    name: str,
    *,
    knn: float,
    linear: float = 0.9,
    baseline: float = 0.6,
    collapsed: float = 0.0,
    seed: int = 0,
    eval_fingerprint: str | None = None,
) -> EvaluateRecord:
    shards = ingest(cfg.ingest, cfg.shard_dir)
    ingested = IngestRecord(
        shard_folder=shards.folder,
        manifest_path=f"{shards.folder}/manifest.json",
        fingerprint=shards.manifest.fingerprint,
        samples={k: v.samples for k, v in shards.manifest.splits.items()},
        num_classes=10,
        rejected=0,
        reused=True,
        duration_s=1.0,
    )
    torch.manual_seed(seed)
    method = build_method(cfg)
    checkpoint = cfg.work_path / "ckpt" / name
    history = [{"step": 3.0, "epoch": 1.0, "loss": 5.0, "images_per_s": 100.0, "lr": 0.001}]
    save_state(checkpoint, method, build_optimizer(method, cfg.train), TrainState(1, 3, history))
    pretrain = PretrainRecord(
        ingest=ingested, run_name=name, storage_path=str(cfg.work_path), checkpoint_path=str(checkpoint), epochs=1,
        steps=3, final_loss=5.0, images_per_s=100.0, history=history, duration_s=1.0,
    )  # fmt: skip
    metrics = {
        "digits/ssl/knn_k20_top1": knn,
        "digits/random_init/knn_k20_top1": baseline,
        "digits/ssl/linear_top1": linear,
        "digits/ssl/health_collapsed": collapsed,
        "digits/test_samples": 353.0,
        "digits/train_samples": 1444.0,
    }
    return EvaluateRecord(
        pretrain=pretrain, metrics=metrics, headline="digits/ssl/knn_k20_top1",
        baseline="digits/random_init/knn_k20_top1", datasets=["digits"],
        data_fingerprints={"digits": eval_fingerprint or shards.manifest.fingerprint},
        data_uris={"digits": shards.folder}, duration_s=1.0,
    )  # fmt: skip
