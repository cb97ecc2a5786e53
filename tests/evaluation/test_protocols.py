"""Evaluation protocols: checked on data whose answer is known."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from scipy.special import gammaln, ive

from sslcore.backbones import create_backbone
from sslcore.config import load_config
from sslcore.data.ingest import ingest
from sslcore.evaluation.health import alignment, health_metrics, rankme, std_ratio, uniformity
from sslcore.evaluation.knn import knn_accuracy
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


def test_knn_and_few_shot_solve_separable_data() -> None:
    x, y = _separable(500, 5, 8, seed=2)
    tx, ty = _separable(200, 5, 8, seed=3)
    assert knn_accuracy(tx, ty, x, y, num_classes=5, k=20, temperature=0.07)["top1"] > 0.99
    mean, std = few_shot(x, y, tx, ty, 5, shots=1, seeds=3, c=1.0, max_iter=100)
    assert mean > 0.99 and std < 0.01  # one label per class suffices for blobs this far apart


def test_every_protocol_is_at_chance_on_labels_unrelated_to_the_features() -> None:
    """Chance is 1/5 here; 1000 test samples put a fair protocol within 0.05 of it (four standard errors)."""
    gen = torch.Generator().manual_seed(0)
    x, tx = torch.randn(1000, 16, generator=gen), torch.randn(1000, 16, generator=gen)
    y, ty = torch.randint(0, 5, (1000,), generator=gen), torch.randint(0, 5, (1000,), generator=gen)
    scores = {
        "knn": knn_accuracy(tx, ty, x, y, num_classes=5, k=20, temperature=0.07)["top1"],
        "linear": linear_probe(x, y, tx, ty, 5, cs=(0.1, 1.0), max_iter=200, val_fraction=0.1, seed=0).top1,
        "fewshot": few_shot(x, y, tx, ty, 5, shots=10, seeds=3, c=1.0, max_iter=100)[0],
    }
    assert all(abs(score - 0.2) < 0.05 for score in scores.values()), scores


def test_few_shot_reports_the_mean_and_population_std_of_its_seeds() -> None:
    """Seed ``i`` draws the same labels however many seeds run, so each draw's own score follows from
    the means over 1, 2, 3 and 4 seeds; the reported std must be their population std."""
    x, y = _separable(500, 5, 8, seed=2)
    tx, ty = _separable(200, 5, 8, seed=3)
    x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(7)) * 8  # overlapping classes:
    tx = tx + torch.randn(tx.shape, generator=torch.Generator().manual_seed(8)) * 8  # draws score differently
    runs = [few_shot(x, y, tx, ty, 5, shots=1, seeds=n, c=1.0, max_iter=100) for n in (1, 2, 3, 4)]
    means = [0.0] + [mean for mean, _ in runs]
    scores = [n * means[n] - (n - 1) * means[n - 1] for n in (1, 2, 3, 4)]
    assert all(0.0 <= s <= 1.0 for s in scores), scores
    assert runs[0][1] == 0.0  # one seed, no spread
    for n, (_, std) in enumerate(runs, start=1):
        assert std == pytest.approx(statistics.pstdev(scores[:n]), abs=1e-6)
    assert runs[-1][1] > 0.02, scores  # the draws differ, so a std stuck at 0 fails above
    ten_shot, _ = few_shot(x, y, tx, ty, 5, shots=10, seeds=4, c=1.0, max_iter=100)
    assert ten_shot > runs[-1][0] + 0.1  # more labels per class help on overlapping classes


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
    # u.v of independent uniform unit vectors in D dims has E exp(t u.v) = Γ(D/2) (2/t)^(D/2-1) I_(D/2-1)(t);
    # |u-v|^2 = 2 - 2 u.v, so uniformity (t=2) is -4 + log of that at t=4: -3.752 for D=32
    log_mgf = gammaln(16) + 15 * math.log(2 / 4) + math.log(ive(15, 4.0)) + 4.0  # ive(v, x) = iv(v, x) e^-x
    assert uniformity(z) == pytest.approx(-4.0 + log_mgf, abs=0.02)
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
    torch.manual_seed(cfg.train.seed)  # the weights the random-init baseline starts from
    state = create_backbone(cfg.model).state_dict()
    datasets = [("digits", shards.manifest, shards.folder)]
    first = evaluate_encoders(cfg, datasets, state)
    second = evaluate_encoders(cfg, datasets, state)
    assert first.metrics == second.metrics
    m = first.metrics
    assert m["digits/test_samples"] + m["digits/train_samples"] == 1797
    assert m["digits/pixels/knn_k20_top1"] > 0.95  # raw pixels are strong on digits
    # "ssl" is given the very weights random_init is rebuilt from: every protocol must score both the same
    ssl = {k.removeprefix("digits/ssl/"): v for k, v in m.items() if k.startswith("digits/ssl/") and "_vs_" not in k}
    assert ssl == {
        k.removeprefix("digits/random_init/"): v for k, v in m.items() if k.startswith("digits/random_init/")
    }
    for enc in ("ssl", "random_init", "pixels"):
        for key in ("knn_k20_top1", "knn_k200_top1", "linear_top1", "fewshot_1shot_mean", "fewshot_5shot_std"):
            assert f"digits/{enc}/{key}" in m
        assert m[f"digits/{enc}/knn_k20_top1"] > 0.5  # chance is 0.1: even random conv features find digits
        assert m[f"digits/{enc}/fewshot_5shot_mean"] > m[f"digits/{enc}/fewshot_1shot_mean"] + 0.1
    assert first.headline == "digits/ssl/knn_k20_top1" and first.baseline == "digits/random_init/knn_k20_top1"
    # the paired test on the first kNN setting: pixels are far ahead of an untrained encoder on digits
    assert m["digits/ssl/knn_k20_vs_pixels_p"] < 1e-6
    assert m["digits/ssl/knn_k20_vs_random_init_p"] == 1.0  # the same weights here: the same predictions
    assert not any(k.startswith("digits/ssl/knn_k200_vs") for k in m)
    assert first.datasets[0].confusion.sum() == m["digits/test_samples"]
