"""Evaluation protocols: checked on data whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslcore.backbones import create_backbone
from sslcore.config import load_config
from sslcore.data.ingest import ingest
from sslcore.evaluation.health import alignment, health_metrics, rankme, std_ratio, uniformity
from sslcore.evaluation.linear import carve_validation, few_shot, fit_linear, linear_probe
from sslcore.evaluation.protocols import EvaluationError, LabelledSplit, check_label_spaces, evaluate_encoders
from sslcore.inference import Encoder, EncoderSpec


def _separable(n: int, classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around class centres that depend only on (classes, dim); points on ``seed``."""
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(classes * 1000 + dim)) * 6
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    return centers[y] + torch.randn(n, dim, generator=gen) * 0.5, y


def test_linear_probe_solves_separable_data_and_not_shuffled_labels() -> None:
    x, y = _separable(600, 5, 16, seed=0)
    tx, ty = _separable(300, 5, 16, seed=1)
    good = linear_probe(x, y, tx, ty, 5, cs=(0.1, 1.0), max_iter=200, val_fraction=0.1, seed=0)
    assert good.top1 > 0.99
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    chance = linear_probe(x, shuffled, tx, ty, 5, cs=(0.1, 1.0), max_iter=200, val_fraction=0.1, seed=0)
    assert abs(chance.top1 - 0.2) < 0.1, chance.top1


@pytest.mark.parametrize("classes", [2, 3])
def test_linear_probe_scores_every_class(classes: int) -> None:
    """Two classes take scikit-learn's binary form (one row of weights): both logits must come out of it."""
    x, y = _separable(400, classes, 8, seed=4)
    tx, ty = _separable(200, classes, 8, seed=5)
    probe = linear_probe(x, y, tx, ty, classes + 1, cs=(0.1, 1.0), max_iter=200, val_fraction=0.1, seed=0)
    assert probe.top1 > 0.99, probe.top1
    assert set(probe.predictions.tolist()) == set(range(classes))  # the absent class is never predicted


def _objective(clf, x: torch.Tensor, y: torch.Tensor, c: float) -> float:
    """scikit-learn's L2-penalised multinomial objective: C * summed cross-entropy + |W|^2 / 2 (the
    binary form's single row is the difference of the two rows)."""
    logits = clf(x)
    present = torch.unique(y)
    weight = clf.weight[present]
    penalty = (weight[1] - weight[0]).square().sum() if len(present) == 2 else weight.square().sum()
    ce = torch.nn.functional.cross_entropy(logits[:, present], torch.searchsorted(present, y), reduction="sum")
    return float(c * ce + penalty / 2)


@pytest.mark.parametrize("classes", [2, 4])
def test_a_warm_start_reaches_the_cold_fits_optimum(classes: int) -> None:
    x, y = _separable(500, classes, 12, seed=6)
    x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(7)) * 4  # overlapping classes
    strong = fit_linear(x, y, classes, c=0.01, max_iter=500)
    cold = fit_linear(x, y, classes, c=0.1, max_iter=500)
    warm = fit_linear(x, y, classes, c=0.1, max_iter=500, init=strong)
    assert _objective(warm, x, y, 0.1) == pytest.approx(_objective(cold, x, y, 0.1), rel=1e-2)  # within tol
    assert _objective(warm, x, y, 0.1) < _objective(strong, x, y, 0.1)  # it moved to the new optimum
    agree = (warm(x).argmax(1) == cold(x).argmax(1)).float().mean()
    assert agree > 0.99
    without_class_0 = fit_linear(x[y > 0], y[y > 0], classes + 1, c=1.0, max_iter=10)
    with pytest.raises(ValueError, match="other classes"):
        fit_linear(x, y, classes + 1, c=1.0, max_iter=10, init=without_class_0)


def test_validation_split_is_stratified_disjoint_and_seeded() -> None:
    y = torch.arange(100) % 4
    fit, val = carve_validation(y, 0.2, seed=3)
    assert set(fit.tolist()).isdisjoint(val.tolist()) and len(fit) + len(val) == 100
    assert torch.bincount(y[val]).tolist() == [5, 5, 5, 5]
    assert torch.equal(val, carve_validation(y, 0.2, seed=3)[1])
    assert not torch.equal(val, carve_validation(y, 0.2, seed=4)[1])


def test_few_shot_reports_mean_and_spread_over_seeds() -> None:
    x, y = _separable(500, 5, 8, seed=2)
    tx, ty = _separable(200, 5, 8, seed=3)
    mean, std = few_shot(x, y, tx, ty, 5, shots=1, seeds=4, c=1.0, max_iter=100)
    assert 0.5 < mean <= 1.0 and std >= 0.0
    mean10, _ = few_shot(x, y, tx, ty, 5, shots=10, seeds=2, c=1.0, max_iter=100)
    assert mean10 >= mean - 0.05


def test_health_metrics_known_values() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(400, 32, generator=gen)
    assert rankme(z) > 25  # isotropic: nearly full rank
    low = torch.randn(400, 3, generator=gen) @ torch.randn(3, 32, generator=gen)
    assert rankme(low) < 4  # rank 3
    collapsed = torch.ones(50, 32) + 1e-6 * torch.randn(50, 32, generator=gen)
    assert std_ratio(collapsed) < 0.01 and health_metrics(collapsed)["collapsed"] == 1.0
    assert health_metrics(z)["collapsed"] == 0.0
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-9)
    assert alignment(z, -z) == pytest.approx(4.0)
    assert uniformity(collapsed) == pytest.approx(0.0, abs=1e-6)  # every pair at distance 0
    assert -4.0 <= uniformity(z) < -1.0
    assert math.isclose(std_ratio(torch.nn.functional.one_hot(torch.arange(32)).float()), std_ratio(torch.eye(32)))


def _split(labels: list[int]) -> LabelledSplit:
    return LabelledSplit(np.zeros((len(labels), 4, 4, 3), np.uint8), torch.tensor(labels))


def test_mismatched_label_spaces_are_a_clear_error() -> None:
    with pytest.raises(EvaluationError, match=r"classes \[c\] appear in the test split but not in train"):
        check_label_spaces("toy", ("a", "b", "c"), _split([0, 1, 0]), _split([0, 2]))
    with pytest.raises(EvaluationError, match="carries no labels"):
        check_label_spaces("toy", None, _split([0]), _split([0]))
    assert check_label_spaces("toy", ("a", "b", "c"), _split([0, 1, 2]), _split([2])) == 3


def test_feature_extraction_is_eval_mode_and_gradient_free() -> None:
    cfg = load_config(None, ["model.image_size=16"])
    backbone = create_backbone(cfg.model)
    backbone.train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    encoder = Encoder(
        backbone, EncoderSpec(model=cfg.model, mean=cfg.augment.mean, std=cfg.augment.std, embedding_dim=512)
    )
    images = np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    first = encoder.embed(images)
    second = encoder.embed(images[::-1].copy())[::-1]
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-5)  # no batch statistics involved
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "BatchNorm running stats changed"
    assert not torch.is_grad_enabled() or all(p.grad is None for p in backbone.parameters())


@pytest.mark.slow
def test_evaluation_is_deterministic_and_beats_nothing_it_should_not(tmp_path) -> None:
    cfg = load_config(
        None,
        ["model.backbone=test_resnet", "eval.fewshot_seeds=2", "eval.fewshot_shots=[1, 5]", "eval.linear_c=[0.1, 1.0]"],
    )
    shards = ingest(cfg.ingest, tmp_path)
    torch.manual_seed(0)
    state = create_backbone(cfg.model).state_dict()
    datasets = [("digits", shards.manifest, shards.folder)]
    first = evaluate_encoders(cfg, datasets, state)
    second = evaluate_encoders(cfg, datasets, state)
    assert first.metrics == second.metrics
    m = first.metrics
    assert m["digits/test_samples"] + m["digits/train_samples"] == 1797
    assert m["digits/pixels/knn_k20_top1"] > 0.95  # raw pixels are strong on digits
    assert 0.0 < m["digits/ssl/knn_k20_top1"] <= 1.0
    for enc in ("ssl", "random_init", "pixels"):
        for key in ("knn_k20_top1", "knn_k200_top1", "linear_top1", "fewshot_1shot_mean", "fewshot_5shot_std"):
            assert f"digits/{enc}/{key}" in m
    assert first.headline == "digits/ssl/knn_k20_top1" and first.baseline == "digits/random_init/knn_k20_top1"
    # the paired test on the first kNN setting: pixels are far ahead of an untrained encoder on digits
    assert m["digits/ssl/knn_k20_vs_pixels_p"] < 1e-6
    assert m["digits/ssl/knn_k20_vs_random_init_p"] == 1.0  # the same weights here: the same predictions
    assert not any(k.startswith("digits/ssl/knn_k200_vs") for k in m)
    assert first.datasets[0].confusion.sum() == m["digits/test_samples"]
