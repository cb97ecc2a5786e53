"""Evaluation of data without labels: label-free protocols through the real ingest and encoders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from digit_folders import digit_pngs
from PIL import Image

from sslcore.backbones import create_backbone
from sslcore.config import PipelineConfig, load_config
from sslcore.data.ingest import IngestResult, ingest
from sslcore.evaluation.plan import protocols_for
from sslcore.evaluation.protocols import RETRIEVAL_IMAGES, EvalReport, evaluate_encoders
from sslcore.plots import embedding_map
from tasks.evaluate import _table, summary_markdown

FAST = ["model.backbone=test_resnet", "eval.linear_c=[1.0]", "eval.fewshot_shots=[1]", "eval.fewshot_seeds=1"]
LABEL_FREE = {"retrieval_top1", "retrieval_top5"}
HEALTH = {"health_rankme", "health_std_ratio", "health_alignment", "health_uniformity", "health_collapsed"}


def _cfg(*extra: str) -> PipelineConfig:
    return load_config(None, [*FAST, *extra])


def _ingest(tmp: Path, name: str, labels: str, n: int, **kw: object) -> IngestResult:
    src = digit_pngs(tmp / name, n, subfolders=labels == "subfolder", **kw)  # type: ignore[arg-type]
    cfg = _cfg(f"ingest.source={{kind: folder, path: {src}, labels: {labels}}}")
    return ingest(cfg.ingest, tmp / f"{name}-shards")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, IngestResult]:
    tmp = tmp_path_factory.mktemp("label-free")
    return {
        "photos": _ingest(tmp, "photos", "none", 300, mixed_sizes=True),
        "labelled": _ingest(tmp, "labelled", "subfolder", 400, start=300),
    }


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_backbone(_cfg().model).state_dict()


def _evaluate(cfg: PipelineConfig, shards: dict[str, IngestResult], names: list[str], state) -> EvalReport:
    datasets = [(n, shards[n].manifest, shards[n].folder) for n in names]
    return evaluate_encoders(cfg, datasets, state, two_d=lambda f, seed: f[:, :2])


def test_unlabeled_shards_get_health_and_retrieval_for_every_encoder(shards, state) -> None:
    photos = shards["photos"].manifest
    assert photos.num_classes == 0  # labels=none: nothing for kNN or a probe
    report = _evaluate(_cfg(), shards, ["photos"], state)
    m = report.metrics
    assert report.headline == "photos/ssl/retrieval_top1"
    assert report.baseline == "photos/random_init/retrieval_top1"
    assert not report.labelled
    result = report.datasets[0]
    assert (result.labelled, result.protocols) == (False, ("health", "retrieval"))
    assert result.protocols == protocols_for(_cfg().eval, labelled=False)
    for enc in ("ssl", "random_init"):
        assert {f"photos/{enc}/{k}" for k in LABEL_FREE | HEALTH} <= set(m)
    assert {f"photos/pixels/{k}" for k in LABEL_FREE} <= set(m)  # pixels: retrieval only, no views for health
    assert not any(k.startswith("photos/pixels/health") for k in m)
    assert not any(("knn" in k or "linear" in k or "fewshot" in k) for k in m)
    assert m["photos/test_samples"] == photos.splits["test"].samples
    assert m["photos/train_samples"] == photos.splits["train"].samples
    assert m["photos/retrieval_samples"] == min(RETRIEVAL_IMAGES, photos.splits["test"].samples)
    n = m["photos/retrieval_samples"]
    for enc in ("ssl", "random_init", "pixels"):
        assert 0.0 <= m[f"photos/{enc}/retrieval_top1"] <= m[f"photos/{enc}/retrieval_top5"] <= 1.0
    assert m["photos/pixels/retrieval_top1"] > 5 / n  # raw pixels find their own digit far above chance
    # t-SNE still comes out, without labels; the plot draws it in one colour
    assert result.embedding_2d is not None and result.embedding_labels is None
    assert _evaluate(_cfg(), shards, ["photos"], state).metrics == m  # seeded: the same numbers again


def test_identity_augmentations_make_pixel_self_retrieval_perfect(shards, state) -> None:
    """With views that only resize, a pixel query equals its gallery entry: every image finds itself."""
    cfg = _cfg("augment.crop_scale=[1.0, 1.0]", "augment.color_jitter_p=0", "augment.grayscale_p=0",
               "eval.baselines=[pixels]", "eval.health=false", "eval.plots=false")  # fmt: skip
    m = _evaluate(cfg, shards, ["photos"], state).metrics
    assert m["photos/pixels/retrieval_top1"] == 1.0
    assert not any("health" in k for k in m) and "photos/random_init/retrieval_top1" not in m


def test_a_labelled_eval_dataset_beside_unlabeled_data_gives_the_headline(shards, state) -> None:
    report = _evaluate(_cfg(), shards, ["photos", "labelled"], state)
    m = report.metrics
    assert report.labelled
    assert report.headline == "labelled/ssl/knn_k20_top1"
    assert report.baseline == "labelled/random_init/knn_k20_top1"
    photos, labelled = report.datasets
    assert labelled.protocols == ("knn", "linear", "fewshot", "health", "retrieval")
    assert photos.protocols == ("health", "retrieval")
    for key in ("knn_k20_top1", "linear_top1", "fewshot_1shot_mean", "retrieval_top1", "health_rankme"):
        assert f"labelled/ssl/{key}" in m
    assert "labelled/pixels/retrieval_top1" in m  # the label-free score exists for labelled data too
    assert m["labelled/test_samples"] + m["labelled/train_samples"] == 400
    assert labelled.embedding_labels is not None and labelled.confusion is not None


def test_stage_outputs_for_unlabeled_data(shards, state, tmp_path: Path) -> None:
    report = _evaluate(_cfg(), shards, ["photos"], state)
    text = summary_markdown(report)
    assert "label-free evaluation only: no labelled dataset" in text
    assert "`photos` (no labels): health, retrieval" in text
    rows = _table(report)
    assert {r["protocol"] for r in rows} >= LABEL_FREE | HEALTH
    retrieval = next(r for r in rows if r["protocol"] == "retrieval_top1")
    assert retrieval["labelled"] is False and retrieval["pixels"] is not None
    mixed = summary_markdown(_evaluate(_cfg(), shards, ["photos", "labelled"], state))
    assert "label-free evaluation only" not in mixed and "`labelled` (labelled): knn" in mixed
    result = report.datasets[0]
    path = embedding_map(result.embedding_2d, None, (), "photos: t-SNE", tmp_path / "map.png")
    assert np.asarray(Image.open(path)).std() > 0  # something was drawn
