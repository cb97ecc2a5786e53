"""Evaluation protocols over labelled shards. The train split is the bank, the test split the queries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sslcore.backbones import create_backbone, feature_dim
from sslcore.config import PipelineConfig
from sslcore.data.manifest import Manifest
from sslcore.data.stream import load_split_arrays
from sslcore.evaluation.knn import knn_accuracy
from sslcore.inference import Encoder, EncoderSpec


class EvaluationError(ValueError):
    """The data cannot be evaluated as configured."""


def _labelled(images: list[np.ndarray], labels: np.ndarray) -> tuple[np.ndarray, Tensor]:
    keep = labels >= 0
    stacked = np.stack([img for img, k in zip(images, keep, strict=True) if k]) if keep.any() else None
    if stacked is None:
        raise EvaluationError("no labelled samples: evaluation needs labels in the shards")
    return stacked, torch.as_tensor(labels[keep])


def knn_metrics(
    encoder: Encoder,
    bank: np.ndarray,
    bank_labels: Tensor,
    queries: np.ndarray,
    query_labels: Tensor,
    cfg: PipelineConfig,
    num_classes: int,
) -> dict[str, float]:
    bank_feats = torch.as_tensor(encoder.embed(bank, cfg.eval.batch_size))
    query_feats = torch.as_tensor(encoder.embed(queries, cfg.eval.batch_size))
    return knn_accuracy(
        query_feats,
        query_labels,
        bank_feats,
        bank_labels,
        num_classes=num_classes,
        k=cfg.eval.knn_k,
        temperature=cfg.eval.knn_temperature,
    )


def evaluate_backbone(
    cfg: PipelineConfig,
    manifest: Manifest,
    folder: str | Path,
    backbone_state: dict[str, Tensor],
    device: str = "cpu",
) -> dict[str, float]:
    """kNN of the trained backbone and, in the same run, of the same backbone at random init."""
    if not manifest.label_names:
        raise EvaluationError("the shards carry no labels: evaluation needs a labelled source")
    num_classes = len(manifest.label_names)
    bank, bank_labels = _labelled(*load_split_arrays(manifest, folder, "train", cfg.storage))
    queries, query_labels = _labelled(*load_split_arrays(manifest, folder, "test", cfg.storage))

    def encoder_for(backbone: nn.Module) -> Encoder:
        spec = EncoderSpec(
            model=cfg.model, mean=cfg.augment.mean, std=cfg.augment.std, embedding_dim=feature_dim(backbone)
        )
        return Encoder(backbone, spec, device)

    trained = create_backbone(cfg.model)
    trained.load_state_dict(backbone_state)
    torch.manual_seed(cfg.train.seed)  # the same initial weights training started from
    random_init = create_backbone(cfg.model)

    metrics: dict[str, float] = {}
    for prefix, backbone in (("knn", trained), ("random_init_knn", random_init)):
        result = knn_metrics(encoder_for(backbone), bank, bank_labels, queries, query_labels, cfg, num_classes)
        metrics[f"{prefix}_top1"] = result["top1"]
        metrics[f"{prefix}_top5"] = result["top5"]
    metrics["test_samples"] = float(len(query_labels))
    metrics["bank_samples"] = float(len(bank_labels))
    return metrics
