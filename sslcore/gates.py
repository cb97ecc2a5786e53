"""Champion/challenger gates as a pure function of two metric dictionaries.

The candidate is promoted only when every gate passes: the primary metric improves on the
reference by more than a margin, and no guard metric regresses by more than its tolerance. For
the first model ever, the reference is the candidate's own random-init baseline.

Without any labelled evaluation the default guards are the label-free ones
(:data:`sslcore.config.LABEL_FREE_GUARDS`), and a ``{dataset}`` guard is only checked on the
datasets that have its metric: a linear-probe guard does not fail on an unlabeled dataset
evaluated beside a labelled one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sslcore.config import PromotionConfig
from sslcore.evaluation.plan import SSL, is_labelled_metric


class PromotionError(RuntimeError):
    """Promotion cannot proceed; the message says why."""


class PromotionConflict(PromotionError):
    """Another promotion moved the aliases or holds the lock."""


@dataclass(frozen=True)
class GateResult:
    gate: str  # "primary" or "guard"
    metric: str
    candidate: float | None
    reference: float | None
    threshold: float  # the value the candidate had to reach (higher is better) or stay under
    passed: bool


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    gates: tuple[GateResult, ...]

    def as_dict(self) -> dict[str, object]:
        return {"promote": self.promote, "reason": self.reason, "gates": [asdict(g) for g in self.gates]}


def _expand(metric: str, datasets: list[str], *measured: dict[str, float]) -> list[str]:
    """``{dataset}`` over the datasets where some of ``measured`` has the metric; over all of them
    (each then missing) when none has it, so that a guard nothing measured fails instead of passing."""
    if "{dataset}" not in metric:
        return [metric]
    names = [metric.replace("{dataset}", d) for d in datasets]
    return [n for n in names if any(n in m for m in measured)] or names


def has_labelled_metrics(metrics: dict[str, float]) -> bool:
    """Whether an evaluation measured the pretrained encoder with labels (kNN, probes, fine-tuning)."""
    return any(f"/{SSL}/" in name and is_labelled_metric(name) for name in metrics)


def decide(
    candidate: dict[str, float],
    reference: dict[str, float],
    cfg: PromotionConfig,
    *,
    primary: str,
    datasets: list[str],
    first: bool = False,
    labelled: bool | None = None,
) -> Decision:
    """Compare ``candidate`` with ``reference`` (the champion's metrics, on the same evaluation data).

    With ``first``, the reference for the primary metric is the candidate's random-init baseline
    (``<dataset>/ssl/...`` -> ``<dataset>/random_init/...``) and guards are checked on the
    candidate alone where they have an absolute meaning (collapse). ``labelled`` picks the default
    guards (``cfg.resolved_guards``); by default, whether the candidate has labelled metrics.
    """
    if labelled is None:
        labelled = has_labelled_metrics(candidate)
    results = []
    cand = candidate.get(primary)
    if first:
        ref_key = primary.replace("/ssl/", "/random_init/", 1)
        ref = candidate.get(ref_key)
        margin = cfg.baseline_margin
    else:
        ref = reference.get(primary)
        margin = cfg.min_margin
    ok = cand is not None and ref is not None and cand > ref + margin
    results.append(GateResult("primary", primary, cand, ref, (ref or 0.0) + margin, ok))
    for guard in cfg.resolved_guards(labelled):
        for metric in _expand(guard.metric, datasets, candidate, reference):
            c = candidate.get(metric)
            r = 0.0 if first and "collapsed" in metric else reference.get(metric)
            if first and r is None:
                continue  # nothing to regress from
            if c is None or r is None:
                results.append(GateResult("guard", metric, c, r, float("nan"), False))
                continue
            if guard.higher_is_better:
                threshold, passed = r - guard.tolerance, c >= r - guard.tolerance
            else:
                threshold, passed = r + guard.tolerance, c <= r + guard.tolerance
            results.append(GateResult("guard", metric, c, r, threshold, passed))
    failed = [g for g in results if not g.passed]
    if not failed:
        what = "random-init baseline" if first else "champion"
        return Decision(True, f"every gate passed against the {what}", tuple(results))
    names = ", ".join(f"{g.gate} {g.metric} ({_fmt(g.candidate)} vs {_fmt(g.reference)})" for g in failed)
    return Decision(False, f"failed: {names}", tuple(results))


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:.4f}"
