"""Evaluate stage: transfer metrics of the pretrained backbone, next to its random-init baseline."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from sslcore.config import PipelineConfig
from sslcore.data.manifest import read_manifest
from sslcore.evaluation.protocols import evaluate_backbone
from sslcore.train import backbone_state_dict
from tasks.errors import retry_unless_user_error
from tasks.records import EvaluateRecord, PretrainRecord


@task(
    name="evaluate",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
    tags=["sslpipe", "evaluate"],
)
def evaluate(config: PipelineConfig, pretrain: PretrainRecord) -> EvaluateRecord:
    """kNN top-1/top-5 on the test split with the train split as the bank."""
    start = time.perf_counter()
    folder = pretrain.ingest.shard_folder
    state = backbone_state_dict(Path(pretrain.checkpoint_path))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics = evaluate_backbone(config, read_manifest(folder, config.storage), folder, state, device=device)
    create_table_artifact(
        key="evaluation",
        table=[
            {
                "protocol": f"kNN k={config.eval.knn_k} T={config.eval.knn_temperature}",
                "encoder": name,
                "top1": round(metrics[f"{p}_top1"], 4),
                "top5": round(metrics[f"{p}_top5"], 4),
            }
            for name, p in (("pretrained", "knn"), ("random init", "random_init_knn"))
        ],
        description="Transfer results next to the random-init baseline",
    )
    return EvaluateRecord(pretrain=pretrain, metrics=metrics, duration_s=time.perf_counter() - start)
