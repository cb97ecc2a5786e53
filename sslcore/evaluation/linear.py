"""Linear probes on frozen features: a standardised linear classifier, its weight-decay sweep
selected on a validation split carved from train, and few-shot variants.

Features are cached once per encoder, standardised with the training split's mean and std, and a
multinomial logistic regression is fit by scikit-learn's L-BFGS (as CLIP's linear probes), which
is fast on CPU and deterministic. The sweep runs from the strongest regularisation to the weakest,
each fit starting from the previous solution, and the final refit on all of train starts from the
selected one (warm starts: the same optimum, reached in fewer iterations).
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass

import torch
from threadpoolctl import threadpool_limits
from torch import Tensor


@dataclass(frozen=True)
class ProbeResult:
    top1: float
    top5: float
    c: float  # the selected inverse L2 strength
    val_top1: float
    predictions: Tensor  # (N,) predicted class per test sample


def _standardise(train: Tensor, *others: Tensor) -> list[Tensor]:
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


# Problems with fewer feature values than this fit on one BLAS thread (more only fight over the
# cores); larger ones use every core the process may use.
ONE_THREAD_BELOW = 2_000_000


class LinearClassifier:
    """A fitted multinomial logistic regression: ``logits = x @ W.T + b``."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        self.weight = weight  # (C, D)
        self.bias = bias  # (C,)

    def __call__(self, x: Tensor) -> Tensor:
        return x.float() @ self.weight.T + self.bias


def fit_linear(
    x: Tensor, y: Tensor, num_classes: int, *, c: float, max_iter: int, init: LinearClassifier | None = None
) -> LinearClassifier:
    """Multinomial logistic regression on standardised features ``x`` (N, D), labels ``y`` (N,),
    with inverse L2 strength ``c``: scikit-learn's L-BFGS (the recipe of CLIP's linear probes),
    deterministic given the data. Classes absent from ``y`` get a logit of -inf. ``init``: a fit
    on the same classes to start from (a warm start)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    present = torch.unique(y)
    weight = torch.zeros(num_classes, x.shape[1])
    bias = torch.full((num_classes,), float("-inf"))
    if len(present) == 1:  # a single class: it is always the prediction
        bias[present] = 0.0
        return LinearClassifier(weight, bias)
    features = x.float().numpy()
    model = LogisticRegression(C=c, max_iter=max_iter, tol=1e-4, warm_start=init is not None)
    if init is not None:
        if not torch.isfinite(init.bias[present]).all():
            raise ValueError("init was fit on other classes than y holds")
        w, b = init.weight[present], init.bias[present]
        if len(present) == 2:  # scikit-learn's binary form: one row, the second class's logit minus the first's
            w, b = w[1:] - w[:1], b[1:] - b[:1]
        model.coef_ = w.numpy().astype(features.dtype)
        model.intercept_ = b.numpy().astype(features.dtype)
    with warnings.catch_warnings(), threadpool_limits(1 if x.numel() < ONE_THREAD_BELOW else None):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, y.numpy())
    classes = torch.as_tensor(model.classes_)
    coef = torch.as_tensor(model.coef_, dtype=torch.float32)
    intercept = torch.as_tensor(model.intercept_, dtype=torch.float32)
    if len(classes) == 2:  # binary: one row scores the second class against the first, whose logit is 0
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros_like(intercept), intercept])
    weight[classes] = coef
    bias[classes] = intercept
    return LinearClassifier(weight, bias)


@torch.no_grad()
def accuracy(logits: Tensor, y: Tensor) -> tuple[float, float]:
    ranked = logits.argsort(dim=1, descending=True, stable=True)
    top1 = (ranked[:, 0] == y).float().mean().item()
    top5 = (ranked[:, : min(5, logits.shape[1])] == y[:, None]).any(dim=1).float().mean().item()
    return top1, top5


def carve_validation(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Stratified split of train indices into (fit, validation); every class keeps >= 1 to fit."""
    gen = torch.Generator().manual_seed(seed)
    fit, val = [], []
    for cls in torch.unique(y):
        idx = torch.nonzero(y == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = min(round(len(idx) * fraction), len(idx) - 1)
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return torch.cat(fit).sort().values, torch.cat(val).sort().values


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    *,
    cs: tuple[float, ...],
    max_iter: int,
    val_fraction: float,
    seed: int,
) -> ProbeResult:
    """Pick ``C`` on a validation split of train, refit on all of train, score test."""
    fit_idx, val_idx = carve_validation(train_y, val_fraction, seed)
    best: tuple[float, float, LinearClassifier] | None = None
    if len(cs) > 1 and len(val_idx) > 0:
        fx, vx = _standardise(train_x[fit_idx], train_x[val_idx])
        clf: LinearClassifier | None = None
        for c in sorted(cs):  # strongest regularisation first: each fit warm-starts the next
            clf = fit_linear(fx, train_y[fit_idx], num_classes, c=c, max_iter=max_iter, init=clf)
            val_top1, _ = accuracy(clf(vx), train_y[val_idx])
            if best is None or val_top1 > best[0]:
                best = (val_top1, c, clf)
    val_top1, c, init = best if best is not None else (float("nan"), cs[0], None)
    tx, sx = _standardise(train_x, test_x)
    logits = fit_linear(tx, train_y, num_classes, c=c, max_iter=max_iter, init=init)(sx)
    top1, top5 = accuracy(logits, test_y)
    return ProbeResult(top1, top5, c, val_top1, logits.argmax(dim=1))


def few_shot(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    *,
    shots: int,
    seeds: int,
    c: float,
    max_iter: int,
) -> tuple[float, float]:
    """Mean and standard deviation over ``seeds`` of a linear probe fit on ``shots`` labels per class."""
    scores = []
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(1000 + seed)
        picked = []
        for cls in torch.unique(train_y):
            idx = torch.nonzero(train_y == cls).flatten()
            picked.append(idx[torch.randperm(len(idx), generator=gen)[:shots]])
        sel = torch.cat(picked)
        fx, sx = _standardise(train_x[sel], test_x)
        scores.append(accuracy(fit_linear(fx, train_y[sel], num_classes, c=c, max_iter=max_iter)(sx), test_y)[0])
    return statistics.fmean(scores), statistics.pstdev(scores)
