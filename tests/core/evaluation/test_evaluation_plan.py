"""sslcore.evaluation.plan: which protocols run, and which metrics need labels."""

from __future__ import annotations

import pytest

from sslcore.config import ConfigError, load_config
from sslcore.evaluation.plan import dataset_names, headline_metric, is_labelled_metric, protocols_for


def _eval(*overrides: str):
    return load_config(None, list(overrides)).eval


def test_default_plan_with_and_without_labels() -> None:
    assert protocols_for(_eval(), labelled=True) == ("knn", "linear", "fewshot", "health", "retrieval")
    assert protocols_for(_eval(), labelled=False) == ("health", "retrieval")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["eval.knn=[]"], ("linear", "fewshot", "health", "retrieval")),
        (["eval.linear_probe=false"], ("knn", "health", "retrieval")),  # few-shot reuses the probe's C
        (["eval.fewshot_shots=[]"], ("knn", "linear", "health", "retrieval")),
        (["eval.finetune_epochs=2", "eval.health=false"], ("knn", "linear", "fewshot", "finetune", "retrieval")),
    ],
)
def test_plan_follows_the_config(overrides: list[str], expected: tuple[str, ...]) -> None:
    assert protocols_for(_eval(*overrides), labelled=True) == expected
    label_free = tuple(p for p in expected if p in ("health", "retrieval"))
    assert protocols_for(_eval(*overrides), labelled=False) == label_free


@pytest.mark.parametrize(
    ("name", "labelled"),
    [
        ("digits/ssl/knn_k20_top1", True),
        ("digits/ssl/knn_k20_vs_pixels_p", True),
        ("fmnist/random_init/linear_top1", True),
        ("fewshot_5shot_mean", True),
        ("x/ssl/finetune_top1", True),
        ("photos/ssl/retrieval_top1", False),
        ("photos/ssl/health_std_ratio", False),
        ("{dataset}/ssl/health_collapsed", False),
        ("photos/test_samples", False),
    ],
)
def test_is_labelled_metric(name: str, labelled: bool) -> None:
    assert is_labelled_metric(name) is labelled


def test_headline_is_the_first_labelled_dataset_else_retrieval() -> None:
    ev = _eval()
    assert headline_metric(ev, [("photos", False), ("a", True), ("b", True)]) == "a/ssl/knn_k20_top1"
    assert headline_metric(ev, [("photos", False), ("more", False)]) == "photos/ssl/retrieval_top1"
    assert headline_metric(_eval("eval.knn=[]"), [("a", True)]) == "a/ssl/linear_top1"
    no_probe = _eval("eval.knn=[]", "eval.linear_probe=false")
    assert headline_metric(no_probe, [("a", True)]) == "a/ssl/retrieval_top1"


def test_dataset_names_put_the_ingested_data_first_and_refuse_clashes(tmp_path) -> None:
    folder = tmp_path / "raw photos"
    entries = "eval.datasets=[{name: digits, source: {kind: digits}}, {name: x, path: /s}]"
    cfg = load_config(None, [f"ingest.source={{kind: folder, path: '{folder}'}}", entries])
    assert dataset_names(cfg) == ["raw_photos", "digits", "x"]
    with pytest.raises(ConfigError, match="'digits' is also the name of the ingested data"):
        dataset_names(load_config(None, ["eval.datasets=[{name: digits, path: /s}]"]))
    with pytest.raises(ConfigError, match="used twice"):
        dataset_names(load_config(None, ["eval.datasets=[{name: a, path: /s}, {name: a, path: /t}]"]))
