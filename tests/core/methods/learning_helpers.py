"""Shared by the learning tests (test_method_learning*.py, split in two files so that the test
processes share the work): on digits, each method's defaults beat the kNN accuracy of the same
backbone at random initialisation, within a small CPU budget. A plain module, not a conftest.py.

Training runs the framework-free core the Ray worker loop uses (``TrainStream`` -> the method's
own view transform -> ``train_epoch`` with per-step schedules, EMA updates, clipping and freezing);
features for kNN go through ``sslcore.inference.Encoder`` as in evaluation and serving. Only the
budget (backbone, batch, epochs) is set here; every ``method.*`` value is the method's default.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sslcore.backbones import create_backbone, feature_dim
from sslcore.config import IngestConfig, PipelineConfig, load_config
from sslcore.data.ingest import ingest
from sslcore.data.manifest import Manifest
from sslcore.data.stream import TrainStream, load_split_arrays, shard_urls, views_only
from sslcore.evaluation.knn import knn_accuracy
from sslcore.inference import Encoder, EncoderSpec
from sslcore.methods import as_method, build_method
from sslcore.train import TrainState, build_optimizer, plan_steps, train_epoch

TEST_VIT = ["model.backbone=test_vit", "model.image_size=16", "model.patch_size=4"]
TEST_RESNET = ["model.backbone=test_resnet", "model.image_size=16", "model.small_image_stem=false"]
# method -> (backbone, epochs): a small budget that learns reliably. Backbones are timm's tiny test
# models: a ResNet with the standard stem (random-init kNN ~0.76) and a ViT with 4-pixel patches
# (random-init kNN ~0.46; required by the patch-based methods). Masked modelling needs more, but
# cheaper, epochs. DINO and MoCo v2 run on the ResNet here and on the ViT in tests of their own.
BUDGETS: dict[str, tuple[list[str], int]] = {
    "simclr": (TEST_RESNET, 3),
    "moco_v2": (TEST_RESNET, 3),
    "moco_v3": (TEST_RESNET, 3),
    "byol": (TEST_VIT, 6),
    "vicreg": (TEST_RESNET, 3),
    "barlow_twins": (TEST_RESNET, 3),
    "dino": (TEST_RESNET, 3),
    "dinov2": (TEST_VIT, 2),
    "mae": (TEST_VIT, 18),
    "beit": (TEST_VIT, 28),
}
MARGIN = 0.02  # kNN top-1 points above random init
MASKED = ("beit", "mae")  # the most epochs: a test file of their own


@contextmanager
def one_thread() -> Iterator[None]:
    """One compute thread; the loader worker process augments on the other core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Digits:
    folder: str
    manifest: Manifest
    train: tuple[np.ndarray, torch.Tensor]
    test: tuple[np.ndarray, torch.Tensor]


def load_digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    result = ingest(IngestConfig(), str(tmp_path_factory.mktemp("digits")))
    splits = {}
    for split in ("train", "test"):
        images, labels = load_split_arrays(result.manifest, result.folder, split)
        splits[split] = (np.stack(images), torch.as_tensor(labels))
    return Digits(result.folder, result.manifest, splits["train"], splits["test"])


def _knn(backbone: torch.nn.Module, cfg: PipelineConfig, data: Digits) -> float:
    spec = EncoderSpec(model=cfg.model, mean=cfg.augment.mean, std=cfg.augment.std, embedding_dim=feature_dim(backbone))
    encoder = Encoder(backbone, spec)
    bank, queries = encoder.embed(data.train[0]), encoder.embed(data.test[0])
    result = knn_accuracy(
        torch.as_tensor(queries), data.test[1], torch.as_tensor(bank), data.train[1], num_classes=10, k=20
    )
    return result["top1"]


def check_method_learns(
    name: str, digits: Digits, budget: tuple[list[str], int] | None = None, margin: float = MARGIN
) -> None:
    """Train ``name`` within its budget (or ``budget``: backbone and epochs); its kNN must beat
    random init by ``margin``."""
    backbone, epochs = budget or BUDGETS[name]
    cfg = load_config(
        None,
        [f"method.name={name}", *backbone, f"train.epochs={epochs}", "train.batch_size=128", "train.loader_workers=1"],
    )
    torch.manual_seed(cfg.train.seed)
    random_init = _knn(create_backbone(cfg.model), cfg, digits)

    start = time.perf_counter()
    torch.manual_seed(cfg.train.seed)  # the same initial weights as the baseline
    model = build_method(cfg)
    method = as_method(model)
    optimizer = build_optimizer(model, cfg.train)
    plan = plan_steps(cfg, digits.manifest.split("train").samples)
    stream = TrainStream(
        shard_urls(digits.manifest, digits.folder, "train"),
        method.view_transform(cfg.augment, cfg.model.image_size),
        rank=0,
        world_size=1,
        seed=cfg.train.seed,
    )
    loader = DataLoader(stream, batch_size=cfg.train.batch_size, num_workers=cfg.train.loader_workers)
    batches, state = views_only(iter(loader)), TrainState()
    for _ in range(cfg.train.epochs):
        means, _ = train_epoch(model, batches, optimizer, plan, state, device=torch.device("cpu"), amp=False)
        assert np.isfinite(means["loss"])
    trained = _knn(method.backbone, cfg, digits)
    print(f"{name}: kNN top-1 {trained:.4f} vs random init {random_init:.4f} ({time.perf_counter() - start:.0f} s)")
    assert trained > random_init + margin
