"""Which evaluation protocols run, decided from the config and whether a dataset has labels.

One pure function answers it for preflight (before any data is ingested), for the evaluation
itself and for the promotion gates, so the plan a user is shown and what actually runs cannot drift.

Protocol families:

* needing labels: ``knn`` (with the paired test against the baselines), ``linear``, ``fewshot``
  (uses the linear probe's regularisation, so only with ``eval.linear_probe``), ``finetune``;
* label-free: ``health`` (RankMe, std ratio, alignment, uniformity, collapse flag) and
  ``retrieval`` (augmentation-invariance self-retrieval, always run: it is the score every
  dataset has, labelled or not).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence

from sslcore.config import ConfigError, EvalConfig, PipelineConfig, Source

LABELLED_FAMILIES = ("knn", "linear", "fewshot", "finetune")
LABEL_FREE_FAMILIES = ("health", "retrieval")
SSL = "ssl"
RANDOM_INIT = "random_init"


def protocols_for(eval_cfg: EvalConfig, labelled: bool) -> tuple[str, ...]:
    """The protocol families that run on one dataset, in the order they are reported."""
    families: list[str] = []
    if labelled:
        if eval_cfg.knn:
            families.append("knn")
        if eval_cfg.linear_probe:
            families.append("linear")
            if eval_cfg.fewshot_shots:
                families.append("fewshot")
        if eval_cfg.finetune_epochs > 0:
            families.append("finetune")
    if eval_cfg.health:
        families.append("health")
    families.append("retrieval")
    return tuple(families)


def is_labelled_metric(name: str) -> bool:
    """Whether a metric needs labels: ``digits/ssl/linear_top1`` (or just ``linear_top1``) does,
    ``photos/ssl/retrieval_top1`` and ``photos/ssl/health_std_ratio`` do not."""
    protocol = name.rsplit("/", 1)[-1]
    return protocol.startswith(tuple(f"{family}_" for family in LABELLED_FAMILIES))


def headline_metric(eval_cfg: EvalConfig, datasets: Sequence[tuple[str, bool]]) -> str:
    """The evaluation's primary number for ``(name, labelled)`` datasets in evaluation order.

    The first labelled dataset's first kNN setting (its linear probe without kNN settings), else
    the first dataset's self-retrieval: a label-free run still has a headline, and the promotion
    gates compare it with the random-init backbone's on the first model ever.
    """
    if not datasets:
        raise ValueError("the evaluation needs at least one dataset")
    for name, labelled in datasets:
        families = protocols_for(eval_cfg, labelled)
        if labelled and "knn" in families:
            return f"{name}/{SSL}/knn_k{eval_cfg.knn[0].k}_top1"
        if labelled and "linear" in families:
            return f"{name}/{SSL}/linear_top1"
    return f"{datasets[0][0]}/{SSL}/retrieval_top1"


def baseline_metric(headline: str) -> str:
    """The same protocol for the backbone at random init (the weights pretraining started from)."""
    return headline.replace(f"/{SSL}/", f"/{RANDOM_INIT}/", 1)


def source_dataset_name(source: Source) -> str:
    """The metric prefix of the ingested data: the source folder's last component, else its kind."""
    path = getattr(source, "path", None)
    name = posixpath.basename(str(path).rstrip("/")) if path else ""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or source.kind


def dataset_names(cfg: PipelineConfig) -> list[str]:
    """Every evaluated dataset's name, the ingested data first; raises :class:`ConfigError` on a clash,
    since metric names (``<dataset>/<encoder>/<protocol>``) must say which data they come from."""
    own = source_dataset_name(cfg.ingest.source)
    names = [own]
    for d in cfg.eval.datasets:
        if d.name == own:
            raise ConfigError(
                f"eval.datasets: '{d.name}' is also the name of the ingested data (evaluated first, always): "
                f"rename the eval.datasets entry"
            )
        if d.name in names:
            raise ConfigError(f"eval.datasets: the name '{d.name}' is used twice; give each entry its own name")
        names.append(d.name)
    return names
