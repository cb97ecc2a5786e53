"""The kNN monitor that draws a curve during pretraining (sslcore.monitor)."""

from __future__ import annotations

import pytest
import torch
from sslcore_data_testing import ingest_digits_once
from torch import nn

from sslcore.config import load_config
from sslcore.data.ingest import IngestResult
from sslcore.monitor import KnnMonitor


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> IngestResult:
    return ingest_digits_once(tmp_path_factory)


class Pixels(nn.Module):
    """Flattened pixels, with a batch norm whose statistics must not move."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x).flatten(1)


def test_pixels_score_high_and_the_backbone_is_left_as_it_was(digits: IngestResult) -> None:
    cfg = load_config(None, ["model.image_size=8"])
    monitor = KnnMonitor.from_shards(cfg, digits.manifest, digits.folder, samples=400)
    assert monitor is not None
    assert len(monitor.bank) == 400 and len(monitor.queries) == 200
    backbone = Pixels().train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    accuracy = monitor(backbone, torch.device("cpu"))
    assert accuracy > 0.9  # raw-pixel kNN on digits is ~0.98
    assert backbone.training, "training mode must be restored"
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed: features must be taken in eval mode"


def test_a_constant_backbone_scores_near_chance(digits: IngestResult) -> None:
    cfg = load_config(None, ["model.image_size=8"])
    monitor = KnnMonitor.from_shards(cfg, digits.manifest, digits.folder, samples=400)
    assert monitor is not None

    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ones(len(x), 4)

    assert monitor(Constant(), torch.device("cpu")) < 0.3


def test_unlabelled_shards_have_no_monitor(digits: IngestResult) -> None:
    cfg = load_config(None, [])
    unlabelled = digits.manifest.model_copy(update={"label_names": None})
    assert KnnMonitor.from_shards(cfg, unlabelled, digits.folder, samples=100) is None
