"""sslcore.gates: promotion decisions on metric dictionaries, labelled and label-free."""

from __future__ import annotations

from sslcore.config import Guard, PromotionConfig
from sslcore.gates import decide, has_labelled_metrics

LABEL_FREE = {
    "photos/ssl/retrieval_top1": 0.62,
    "photos/random_init/retrieval_top1": 0.20,
    "photos/ssl/health_collapsed": 0.0,
    "photos/ssl/health_std_ratio": 0.80,
}
LABELLED = {
    "digits/ssl/knn_k20_top1": 0.90,
    "digits/random_init/knn_k20_top1": 0.70,
    "digits/ssl/linear_top1": 0.92,
    "digits/ssl/health_collapsed": 0.0,
    "digits/ssl/health_std_ratio": 0.8,
}


def _metrics(gates) -> list[tuple[str, str]]:
    return [(g.gate, g.metric) for g in gates]


def test_first_label_free_model_beats_its_random_init_retrieval() -> None:
    d = decide(LABEL_FREE, {}, PromotionConfig(), primary="photos/ssl/retrieval_top1", datasets=["photos"], first=True)
    assert d.promote, d.reason
    primary = d.gates[0]
    assert (primary.metric, primary.candidate, primary.reference) == ("photos/ssl/retrieval_top1", 0.62, 0.20)
    assert _metrics(d.gates[1:]) == [("guard", "photos/ssl/health_collapsed")]  # std ratio: nothing to regress from
    collapsed = LABEL_FREE | {"photos/ssl/health_collapsed": 1.0}
    cfg = PromotionConfig()
    assert not decide(collapsed, {}, cfg, primary="photos/ssl/retrieval_top1", datasets=["photos"], first=True).promote
    weak = LABEL_FREE | {"photos/ssl/retrieval_top1": 0.1}
    assert not decide(weak, {}, cfg, primary="photos/ssl/retrieval_top1", datasets=["photos"], first=True).promote


def test_label_free_defaults_guard_collapse_and_spread_against_the_champion() -> None:
    champion = LABEL_FREE | {"photos/ssl/retrieval_top1": 0.60}
    cfg = PromotionConfig()
    d = decide(LABEL_FREE, champion, cfg, primary="photos/ssl/retrieval_top1", datasets=["photos"])
    assert d.promote and _metrics(d.gates) == [
        ("primary", "photos/ssl/retrieval_top1"),
        ("guard", "photos/ssl/health_collapsed"),
        ("guard", "photos/ssl/health_std_ratio"),
    ]
    narrower = LABEL_FREE | {"photos/ssl/health_std_ratio": 0.65}  # 0.15 below the champion: over 0.1
    d = decide(narrower, champion, cfg, primary="photos/ssl/retrieval_top1", datasets=["photos"])
    assert not d.promote and "photos/ssl/health_std_ratio" in d.reason


def test_labelled_defaults_apply_when_the_candidate_has_labelled_metrics() -> None:
    assert has_labelled_metrics(LABELLED) and not has_labelled_metrics(LABEL_FREE)
    assert not has_labelled_metrics({"digits/random_init/knn_k20_top1": 0.7})  # only the encoder's own count
    champion = LABELLED | {"digits/ssl/knn_k20_top1": 0.85, "digits/ssl/linear_top1": 0.95}
    d = decide(LABELLED, champion, PromotionConfig(), primary="digits/ssl/knn_k20_top1", datasets=["digits"])
    assert not d.promote and "guard digits/ssl/linear_top1" in d.reason  # linear fell by 0.03 > 0.02
    d = decide(LABELLED, champion, PromotionConfig(), primary="digits/ssl/knn_k20_top1", datasets=["digits"],
               labelled=False)  # fmt: skip
    assert d.promote  # the label-free guards, passed explicitly


def test_dataset_guards_skip_datasets_without_the_metric() -> None:
    """A labelled guard is checked on the labelled dataset and not failed on the unlabeled one beside it."""
    candidate = LABELLED | LABEL_FREE
    champion = candidate | {"digits/ssl/knn_k20_top1": 0.80}
    d = decide(candidate, champion, PromotionConfig(), primary="digits/ssl/knn_k20_top1", datasets=["photos", "digits"])
    assert d.promote, d.reason
    guards = [m for g, m in _metrics(d.gates) if g == "guard"]
    assert "digits/ssl/linear_top1" in guards and "photos/ssl/linear_top1" not in guards
    assert {"photos/ssl/health_collapsed", "digits/ssl/health_collapsed"} <= set(guards)


def test_a_guard_no_dataset_measured_fails_as_missing() -> None:
    cfg = PromotionConfig(guards=(Guard(metric="{dataset}/ssl/linear_top1"),))
    champion = LABEL_FREE | {"photos/ssl/retrieval_top1": 0.5}
    d = decide(LABEL_FREE, champion, cfg, primary="photos/ssl/retrieval_top1", datasets=["photos"])
    assert not d.promote
    assert "guard photos/ssl/linear_top1 (missing vs missing)" in d.reason
