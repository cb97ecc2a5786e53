"""Transfer evaluation on labelled shards: the train split is the bank / training set, the test
split gives the score. Every protocol runs for the pretrained encoder and for the baselines it
must beat (the same backbone at random init, raw pixels), in the same run, on the same features.

Metric names are stable: ``<dataset>/<encoder>/<protocol>``, e.g. ``digits/ssl/knn_k20_top1``,
``digits/random_init/linear_top1``, ``digits/pixels/fewshot_5shot_mean``. The first kNN setting is
also tested pairwise against each baseline on the same test images (McNemar's exact test):
``digits/ssl/knn_k20_vs_pixels_p``, ``digits/ssl/knn_k20_vs_random_init_p``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from sslcore.backbones import create_backbone, feature_dim
from sslcore.config import PipelineConfig, StorageConfig
from sslcore.data.manifest import Manifest
from sslcore.data.stream import load_split_arrays
from sslcore.evaluation.finetune import finetune
from sslcore.evaluation.health import health_metrics
from sslcore.evaluation.knn import knn_ranked, ranked_accuracy
from sslcore.evaluation.linear import few_shot, linear_probe
from sslcore.evaluation.paired import mcnemar_exact
from sslcore.inference import Encoder, EncoderSpec
from sslcore.transforms import preprocess, view_transform

SSL = "ssl"
HEALTH_VIEWS = 512  # test images whose two augmented views measure alignment


class EvaluationError(ValueError):
    """The data cannot be evaluated as configured."""


@dataclass(frozen=True)
class LabelledSplit:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: Tensor  # (N,) int64


@dataclass
class DatasetResult:
    name: str
    label_names: tuple[str, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    confusion: np.ndarray | None = None  # linear probe of the pretrained encoder, (C, C)
    embedding_2d: np.ndarray | None = None  # t-SNE of test features, (M, 2)
    embedding_labels: np.ndarray | None = None  # (M,)


@dataclass
class EvalReport:
    metrics: dict[str, float]
    datasets: list[DatasetResult]
    headline: str  # the metric key of the primary number
    baseline: str | None  # the same protocol for the random-init backbone


def _split(manifest: Manifest, folder: str, split: str, storage: StorageConfig | None, name: str) -> LabelledSplit:
    images, labels = load_split_arrays(manifest, folder, split, storage)
    keep = labels >= 0
    if not keep.any():
        raise EvaluationError(f"dataset '{name}': the {split} split has no labelled samples")
    sizes = {img.shape for img, k in zip(images, keep, strict=True) if k}
    if len(sizes) > 1:  # evaluation batches need one size: bring every image to the largest
        side = max(max(s[0], s[1]) for s in sizes)
        images = [np.asarray(Image.fromarray(i).resize((side, side)), dtype=np.uint8) for i in images]
    stacked = np.stack([img for img, k in zip(images, keep, strict=True) if k])
    return LabelledSplit(stacked, torch.as_tensor(labels[keep]))


def check_label_spaces(
    name: str, label_names: tuple[str, ...] | None, train: LabelledSplit, test: LabelledSplit
) -> int:
    if not label_names:
        raise EvaluationError(f"dataset '{name}' carries no labels: evaluation needs a labelled source")
    num_classes = len(label_names)
    train_classes = set(train.labels.tolist())
    missing = sorted(set(test.labels.tolist()) - train_classes)
    if missing:
        shown = ", ".join(label_names[i] if 0 <= i < num_classes else str(i) for i in missing)
        raise EvaluationError(
            f"dataset '{name}': classes [{shown}] appear in the test split but not in train; "
            f"re-ingest with more data or a split that puts every class in train"
        )
    if max(train_classes | set(test.labels.tolist())) >= num_classes:
        raise EvaluationError(f"dataset '{name}': labels exceed the manifest's {num_classes} label names")
    return num_classes


def _pixels(cfg: PipelineConfig) -> Callable[[np.ndarray], Tensor]:
    def fn(images: np.ndarray) -> Tensor:
        side = min(cfg.model.image_size, cfg.eval.pixel_baseline_max_side)
        return preprocess(images, side, cfg.augment.mean, cfg.augment.std).flatten(1)

    return fn


def _two_views(encoder: Encoder, images: np.ndarray, cfg: PipelineConfig, seed: int) -> tuple[Tensor, Tensor]:
    torch.manual_seed(seed)
    transform = view_transform(cfg.augment, cfg.model.image_size)
    pils = [Image.fromarray(img) for img in images]
    v0 = torch.stack([transform(p) for p in pils])
    v1 = torch.stack([transform(p) for p in pils])
    return encoder.embed_tensor(v0), encoder.embed_tensor(v1)


def evaluate_encoders(
    cfg: PipelineConfig,
    datasets: list[tuple[str, Manifest, str]],
    backbone_state: dict[str, Tensor],
    device: str = "cpu",
    two_d: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> EvalReport:
    """Run every configured protocol on every dataset for the pretrained encoder and the baselines.

    Args:
        cfg: Pipeline config (``eval`` section, model and augmentations).
        datasets: ``(name, manifest, shard folder)`` of each labelled downstream dataset.
        backbone_state: The pretrained backbone's ``state_dict``.
        device: Where features are computed.
        two_d: Optional ``(features, seed) -> (M, 2)`` map for the embedding plot (e.g. t-SNE).
    """
    ev = cfg.eval
    spec = EncoderSpec(model=cfg.model, mean=cfg.augment.mean, std=cfg.augment.std, embedding_dim=0)
    trained = Encoder.load_from_state(spec, backbone_state, device)
    Featurize = Callable[[np.ndarray], Tensor]
    encoders: dict[str, tuple[Featurize, Encoder | None]] = {
        SSL: (lambda x: torch.as_tensor(trained.embed(x, ev.batch_size)), trained)
    }
    if "random_init" in ev.baselines:
        torch.manual_seed(cfg.train.seed)  # the weights pretraining started from
        backbone: nn.Module = create_backbone(cfg.model)
        rand = Encoder(backbone, spec.model_copy(update={"embedding_dim": feature_dim(backbone)}), device)
        encoders["random_init"] = (lambda x: torch.as_tensor(rand.embed(x, ev.batch_size)), rand)
    if "pixels" in ev.baselines and cfg.model.image_size <= ev.pixel_baseline_max_side:
        encoders["pixels"] = (_pixels(cfg), None)

    report_metrics: dict[str, float] = {}
    results = []
    for name, manifest, folder in datasets:
        train = _split(manifest, folder, "train", cfg.storage, name)
        test = _split(manifest, folder, "test", cfg.storage, name)
        num_classes = check_label_spaces(name, manifest.label_names, train, test)
        result = DatasetResult(name, tuple(manifest.label_names or ()))
        result.metrics["train_samples"] = float(len(train.labels))
        result.metrics["test_samples"] = float(len(test.labels))
        ssl_test: Tensor | None = None
        hits: dict[str, Tensor] = {}  # per-image top-1 correctness of the first kNN setting
        for enc_name, (featurize, encoder) in encoders.items():
            feats = (featurize(train.images), featurize(test.images))  # once per encoder and dataset
            ssl_test = feats[1] if enc_name == SSL else ssl_test
            keep = result if enc_name == SSL else None
            metrics, knn_hits = _protocols(cfg, feats, encoder, train, test, num_classes, keep)
            result.metrics |= {f"{enc_name}/{k}": v for k, v in metrics.items()}
            if knn_hits is not None:
                hits[enc_name] = knn_hits
        for base in (b for b in hits if b != SSL):  # is the kNN difference more than chance?
            paired = mcnemar_exact(hits[SSL], hits[base])
            result.metrics[f"{SSL}/knn_k{ev.knn[0].k}_vs_{base}_p"] = paired.p_value
        if ev.finetune_epochs > 0:
            top1 = finetune(
                cfg, backbone_state, train.images, train.labels, test.images, test.labels, num_classes, device
            )
            result.metrics[f"{SSL}/finetune_top1"] = top1
        if two_d is not None and ev.plots and ssl_test is not None:
            idx = torch.randperm(len(ssl_test), generator=torch.Generator().manual_seed(ev.seed))[: ev.tsne_samples]
            result.embedding_2d = two_d(ssl_test[idx].numpy(), ev.seed)
            result.embedding_labels = test.labels[idx].numpy()
        report_metrics |= {f"{name}/{k}": v for k, v in result.metrics.items()}
        results.append(result)

    k0 = ev.knn[0].k
    primary = datasets[0][0]
    baseline = f"{primary}/random_init/knn_k{k0}_top1"
    return EvalReport(
        report_metrics, results, f"{primary}/{SSL}/knn_k{k0}_top1", baseline if baseline in report_metrics else None
    )


def _protocols(
    cfg: PipelineConfig,
    feats: tuple[Tensor, Tensor],
    encoder: Encoder | None,
    train: LabelledSplit,
    test: LabelledSplit,
    num_classes: int,
    keep: DatasetResult | None,
) -> tuple[dict[str, float], Tensor | None]:
    """The protocols' metrics for one encoder, and the first kNN setting's per-image top-1
    correctness (for the paired tests against the baselines; None without kNN settings)."""
    ev = cfg.eval
    train_f, test_f = feats
    out: dict[str, float] = {}
    hits: Tensor | None = None
    for setting in ev.knn:
        ranked = knn_ranked(test_f, train_f, train.labels, num_classes=num_classes,
                            k=setting.k, temperature=setting.temperature)  # fmt: skip
        acc = ranked_accuracy(ranked, test.labels)
        out[f"knn_k{setting.k}_top1"], out[f"knn_k{setting.k}_top5"] = acc["top1"], acc["top5"]
        if hits is None:
            hits = ranked[:, 0] == test.labels
    if ev.linear_probe:
        probe = linear_probe(train_f, train.labels, test_f, test.labels, num_classes,
                             cs=ev.linear_c, max_iter=ev.linear_max_iter,
                             val_fraction=ev.val_fraction, seed=ev.seed)  # fmt: skip
        out |= {"linear_top1": probe.top1, "linear_top5": probe.top5, "linear_val_top1": probe.val_top1}
        if keep is not None:
            cm = np.zeros((num_classes, num_classes), dtype=np.int64)
            np.add.at(cm, (test.labels.numpy(), probe.predictions.numpy()), 1)
            keep.confusion = cm
        for shots in ev.fewshot_shots:
            mean, std = few_shot(train_f, train.labels, test_f, test.labels, num_classes, shots=shots,
                                 seeds=ev.fewshot_seeds, c=probe.c,
                                 max_iter=ev.linear_max_iter)  # fmt: skip
            out[f"fewshot_{shots}shot_mean"], out[f"fewshot_{shots}shot_std"] = mean, std
    if ev.health and encoder is not None:
        subset = test.images[:HEALTH_VIEWS]
        z0, z1 = _two_views(encoder, subset, cfg, ev.seed)
        out |= {f"health_{k}": v for k, v in health_metrics(test_f, z0, z1).items()}
    return out, hits
