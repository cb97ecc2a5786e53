"""The model card says which protocols ran, and plainly when none could use labels."""

from __future__ import annotations

from sslcore.config import load_config
from tasks.model_card import NO_LABELS, model_card
from tasks.records import EvaluateRecord, IngestRecord, PretrainRecord


def _evaluation(metrics: dict[str, float], headline: str, protocols: dict[str, list[str]], labelled: bool):
    ingested = IngestRecord(shard_folder="/s/abc", manifest_path="/s/abc/manifest.json", fingerprint="f" * 64,
                            samples={"train": 240, "test": 60}, num_classes=0, rejected=0, reused=False,
                            duration_s=1.0)  # fmt: skip
    pretrain = PretrainRecord(ingest=ingested, run_name="r", storage_path="/r", checkpoint_path="/r/c", epochs=1,
                              steps=3, final_loss=4.0, images_per_s=100.0, history=[], duration_s=1.0)  # fmt: skip
    baseline = headline.replace("/ssl/", "/random_init/")
    return EvaluateRecord(pretrain=pretrain, metrics=metrics, headline=headline,
                          baseline=baseline if baseline in metrics else None, datasets=list(protocols),
                          labelled=labelled, protocols=protocols, duration_s=1.0)  # fmt: skip


PHOTOS = {
    "photos/train_samples": 240.0,
    "photos/test_samples": 60.0,
    "photos/retrieval_samples": 60.0,
    "photos/ssl/retrieval_top1": 0.55,
    "photos/random_init/retrieval_top1": 0.12,
    "photos/pixels/retrieval_top1": 0.40,
    "photos/ssl/health_rankme": 31.5,
    "photos/ssl/health_std_ratio": 0.7,
    "photos/ssl/health_collapsed": 0.0,
}


def test_card_for_unlabeled_data_says_no_labelled_evaluation_ran() -> None:
    evaluation = _evaluation(PHOTOS, "photos/ssl/retrieval_top1", {"photos": ["health", "retrieval"]}, False)
    card = model_card(load_config(None, []), evaluation)
    assert "**photos/ssl/retrieval_top1 = 0.5500** (random init: 0.1200)" in card
    assert "augmented view finds the image itself" in card and "(chance: 0.0167)" in card
    assert NO_LABELS in card
    assert "No labelled evaluation was possible: the data has no labels, so kNN, linear probe and few-shot" in card
    assert "- `photos` (no labels): health, retrieval" in card
    assert "| retrieval_top1 | 0.5500 | 0.1200 | 0.4000 |" in card
    assert "| health_rankme | 31.5000 | - | - |" in card and "| health_collapsed | 0.0000 | - | - |" in card
    assert "Labels were used for evaluation only" not in card


def test_card_with_a_labelled_eval_dataset_lists_both() -> None:
    metrics = PHOTOS | {"sample/train_samples": 80.0, "sample/test_samples": 20.0,
                        "sample/ssl/knn_k20_top1": 0.8, "sample/random_init/knn_k20_top1": 0.5,
                        "sample/ssl/retrieval_top1": 0.6}  # fmt: skip
    protocols = {"photos": ["health", "retrieval"], "sample": ["knn", "linear", "health", "retrieval"]}
    card = model_card(load_config(None, []), _evaluation(metrics, "sample/ssl/knn_k20_top1", protocols, True))
    assert "**sample/ssl/knn_k20_top1 = 0.8000** (random init: 0.5000)\n" in card
    assert NO_LABELS not in card and "Labels were used for evaluation only" in card
    assert "- `sample` (labelled): knn, linear, health, retrieval" in card
    assert "| knn_k20_top1 | 0.8000 | 0.5000 | - |" in card and "| retrieval_top1 | 0.6000 | - | - |" in card
