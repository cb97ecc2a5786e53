"""Transfer evaluation on shards: the train split is the bank / training set, the held-out
``test`` split gives the score. Every protocol runs for the pretrained encoder and for the
baselines it must beat (the same backbone at random init, raw pixels), in the same run, on the
same features.

Labelled datasets get every configured protocol; datasets without labels (no label names, fewer
than two classes, or no labelled sample) get the label-free ones only: health and
augmentation-invariance self-retrieval (:mod:`sslcore.evaluation.retrieval`), which labelled
datasets get too. Which families run comes from :func:`sslcore.evaluation.plan.protocols_for`.

Metric names are stable: ``<dataset>/<encoder>/<protocol>``, e.g. ``digits/ssl/knn_k20_top1``,
``digits/random_init/linear_top1``, ``digits/pixels/fewshot_5shot_mean``,
``photos/ssl/retrieval_top1``. The first kNN setting is also tested pairwise against each baseline
on the same test images (McNemar's exact test): ``digits/ssl/knn_k20_vs_pixels_p``,
``digits/ssl/knn_k20_vs_random_init_p``.
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
from sslcore.evaluation.plan import baseline_metric, headline_metric, protocols_for
from sslcore.evaluation.retrieval import self_retrieval
from sslcore.inference import Encoder, EncoderSpec
from sslcore.transforms import preprocess, view_transform

SSL = "ssl"
HELD_OUT = "test"  # ingest's hash split (or the source's own) holds these images out of pretraining
HEALTH_VIEWS = 512  # test images whose two augmented views measure alignment
RETRIEVAL_IMAGES = 1000  # self-retrieval among this many held-out images: chance is 1/1000 on any data
LABEL_FREE_IMAGES = 5000  # held-out images read from a dataset without labels (health, t-SNE, retrieval)

Featurize = Callable[[np.ndarray], Tensor]


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
    labelled: bool = True
    protocols: tuple[str, ...] = ()  # the protocol families that ran, from plan.protocols_for
    metrics: dict[str, float] = field(default_factory=dict)
    confusion: np.ndarray | None = None  # linear probe of the pretrained encoder, (C, C)
    embedding_2d: np.ndarray | None = None  # t-SNE of test features, (M, 2)
    embedding_labels: np.ndarray | None = None  # (M,); None for a dataset without labels


@dataclass
class EvalReport:
    metrics: dict[str, float]
    datasets: list[DatasetResult]
    headline: str  # the metric key of the primary number
    baseline: str | None  # the same protocol for the random-init backbone
    labelled: bool = True  # any dataset had labels (kNN, linear and few-shot could run)


def _one_size(images: list[np.ndarray]) -> np.ndarray:
    """Stack images; evaluation batches need one size, so differing ones go to the largest side."""
    sizes = {img.shape for img in images}
    if len(sizes) > 1:
        side = max(max(s[0], s[1]) for s in sizes)
        images = [np.asarray(Image.fromarray(i).resize((side, side)), dtype=np.uint8) for i in images]
    return np.stack(images)


def _labelled_only(images: list[np.ndarray], labels: np.ndarray, split: str, name: str) -> LabelledSplit:
    keep = labels >= 0
    if not keep.any():
        raise EvaluationError(f"dataset '{name}': the {split} split has no labelled samples")
    kept = [img for img, k in zip(images, keep, strict=True) if k]
    return LabelledSplit(_one_size(kept), torch.as_tensor(labels[keep]))


def _split(manifest: Manifest, folder: str, split: str, storage: StorageConfig | None, name: str) -> LabelledSplit:
    images, labels = load_split_arrays(manifest, folder, split, storage)
    return _labelled_only(images, labels, split, name)


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


@dataclass(frozen=True)
class _Data:
    """One dataset as the protocols see it: labelled splits when it has labels, and the held-out
    images every label-free protocol uses."""

    held_out: np.ndarray  # (N, H, W, 3) uint8
    train_samples: int
    test_samples: int
    train: LabelledSplit | None = None
    test: LabelledSplit | None = None


def _sampled_held_out(manifest: Manifest, folder: str, storage: StorageConfig | None, seed: int) -> np.ndarray:
    """Up to :data:`LABEL_FREE_IMAGES` held-out images, from shards in a seeded order: an unlabeled
    folder can be large, and its first shards hold only the first paths of the source."""
    info = manifest.split(HELD_OUT)
    order = torch.randperm(len(info.shards), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = manifest.model_copy(
        update={"splits": {HELD_OUT: info.model_copy(update={"shards": tuple(info.shards[i] for i in order)})}}
    )
    images, _ = load_split_arrays(shuffled, folder, HELD_OUT, storage, limit=LABEL_FREE_IMAGES)
    return _one_size(images)


def _load(manifest: Manifest, folder: str, cfg: PipelineConfig, name: str) -> _Data:
    if HELD_OUT not in manifest.splits or manifest.splits[HELD_OUT].samples == 0:
        raise EvaluationError(
            f"dataset '{name}' has no held-out '{HELD_OUT}' images to evaluate on: re-ingest it with "
            f"ingest.test_fraction > 0"
        )
    counts = {s: manifest.splits[s].samples if s in manifest.splits else 0 for s in ("train", HELD_OUT)}
    if manifest.num_classes >= 2:
        train_images, train_labels = load_split_arrays(manifest, folder, "train", cfg.storage)
        test_images, test_labels = load_split_arrays(manifest, folder, HELD_OUT, cfg.storage)
        if (train_labels >= 0).any() or (test_labels >= 0).any():  # labelled; a split without labels is an error
            train = _labelled_only(train_images, train_labels, "train", name)
            test = _labelled_only(test_images, test_labels, HELD_OUT, name)
            return _Data(test.images, len(train.labels), len(test.labels), train, test)
    held_out = _sampled_held_out(manifest, folder, cfg.storage, cfg.eval.seed)
    return _Data(held_out, counts["train"], counts[HELD_OUT])


def _pixels(cfg: PipelineConfig) -> Featurize:
    def fn(images: np.ndarray) -> Tensor:
        side = min(cfg.model.image_size, cfg.eval.pixel_baseline_max_side)
        return preprocess(images, side, cfg.augment.mean, cfg.augment.std).flatten(1)

    return fn


def _views(images: np.ndarray, cfg: PipelineConfig, seed: int) -> Tensor:
    """One augmented view of each image (the training augmentations), (N, 3, S, S), seeded; the
    global RNG is left where it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transform = view_transform(cfg.augment, cfg.model.image_size)
        return torch.stack([transform(Image.fromarray(img)) for img in images])


def _embed_views(encoder: Encoder | None, views: Tensor, batch_size: int) -> Tensor:
    """Features of view tensors: the encoder's, or for raw pixels the normalised views flattened
    (the pixel baseline runs only at ``image_size <= pixel_baseline_max_side``, so they are already
    at the pixel features' side)."""
    if encoder is None:
        return views.flatten(1)
    return torch.cat([encoder.embed_tensor(views[i : i + batch_size]) for i in range(0, len(views), batch_size)])


def _two_views(encoder: Encoder, images: np.ndarray, cfg: PipelineConfig, seed: int) -> tuple[Tensor, Tensor]:
    torch.manual_seed(seed)
    transform = view_transform(cfg.augment, cfg.model.image_size)
    pils = [Image.fromarray(img) for img in images]
    v0 = torch.stack([transform(p) for p in pils])
    v1 = torch.stack([transform(p) for p in pils])
    return encoder.embed_tensor(v0), encoder.embed_tensor(v1)


def _encoders(
    cfg: PipelineConfig, backbone_state: dict[str, Tensor], device: str
) -> dict[str, tuple[Featurize, Encoder | None]]:
    """The pretrained encoder and the configured baselines: ``name -> (featurize images, encoder)``
    (no encoder for raw pixels: no augmented views of its own for health)."""
    ev = cfg.eval
    spec = EncoderSpec(model=cfg.model, mean=cfg.augment.mean, std=cfg.augment.std, embedding_dim=0)
    trained = Encoder.load_from_state(spec, backbone_state, device)
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
    return encoders


def evaluate_encoders(
    cfg: PipelineConfig,
    datasets: list[tuple[str, Manifest, str]],
    backbone_state: dict[str, Tensor],
    device: str = "cpu",
    two_d: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> EvalReport:
    """Run every protocol each dataset allows on it, for the pretrained encoder and the baselines.

    Args:
        cfg: Pipeline config (``eval`` section, model and augmentations).
        datasets: ``(name, manifest, shard folder)`` of each dataset, labelled or not; the first
            labelled one gives the headline (the first one's self-retrieval when none is).
        backbone_state: The pretrained backbone's ``state_dict``.
        device: Where features are computed.
        two_d: Optional ``(features, seed) -> (M, 2)`` map for the embedding plot (e.g. t-SNE).
    """
    ev = cfg.eval
    encoders = _encoders(cfg, backbone_state, device)
    report_metrics: dict[str, float] = {}
    results = []
    for name, manifest, folder in datasets:
        result = _evaluate_dataset(cfg, name, manifest, folder, encoders, backbone_state, device, two_d)
        report_metrics |= {f"{name}/{k}": v for k, v in result.metrics.items()}
        results.append(result)
    headline = headline_metric(ev, [(r.name, r.labelled) for r in results])
    baseline = baseline_metric(headline)
    return EvalReport(
        report_metrics,
        results,
        headline,
        baseline if baseline in report_metrics else None,
        labelled=any(r.labelled for r in results),
    )


def _evaluate_dataset(
    cfg: PipelineConfig,
    name: str,
    manifest: Manifest,
    folder: str,
    encoders: dict[str, tuple[Featurize, Encoder | None]],
    backbone_state: dict[str, Tensor],
    device: str,
    two_d: Callable[[np.ndarray, int], np.ndarray] | None,
) -> DatasetResult:
    ev = cfg.eval
    data = _load(manifest, folder, cfg, name)
    train, test = data.train, data.test
    labelled = train is not None and test is not None
    families = protocols_for(ev, labelled)
    num_classes = 0
    if train is not None and test is not None:
        num_classes = check_label_spaces(name, manifest.label_names, train, test)
    result = DatasetResult(name, tuple(manifest.label_names or ()) if labelled else (), labelled, families)
    result.metrics["train_samples"] = float(data.train_samples)
    result.metrics["test_samples"] = float(data.test_samples)
    pick = torch.randperm(len(data.held_out), generator=torch.Generator().manual_seed(ev.seed))[:RETRIEVAL_IMAGES]
    result.metrics["retrieval_samples"] = float(len(pick))
    views = _views(data.held_out[pick.numpy()], cfg, ev.seed)  # the same queries for every encoder
    ssl_held_out: Tensor | None = None
    hits: dict[str, Tensor] = {}  # per-image top-1 correctness of the first kNN setting
    for enc_name, (featurize, encoder) in encoders.items():
        held_out_f = featurize(data.held_out)  # once per encoder and dataset
        ssl_held_out = held_out_f if enc_name == SSL else ssl_held_out
        metrics: dict[str, float] = {}
        if train is not None and test is not None:
            keep = result if enc_name == SSL else None
            metrics, knn_hits = _labelled_protocols(
                cfg, (featurize(train.images), held_out_f), train, test, num_classes, keep
            )
            if knn_hits is not None:
                hits[enc_name] = knn_hits
        if "health" in families and encoder is not None:
            z0, z1 = _two_views(encoder, data.held_out[:HEALTH_VIEWS], cfg, ev.seed)
            metrics |= {f"health_{k}": v for k, v in health_metrics(held_out_f, z0, z1).items()}
        retrieval = self_retrieval(held_out_f[pick], _embed_views(encoder, views, ev.batch_size))
        metrics |= {f"retrieval_{k}": v for k, v in retrieval.items()}
        result.metrics |= {f"{enc_name}/{k}": v for k, v in metrics.items()}
    for base in (b for b in hits if b != SSL):  # is the kNN difference more than chance?
        paired = mcnemar_exact(hits[SSL], hits[base])
        result.metrics[f"{SSL}/knn_k{ev.knn[0].k}_vs_{base}_p"] = paired.p_value
    if "finetune" in families and train is not None and test is not None:
        top1 = finetune(cfg, backbone_state, train.images, train.labels, test.images, test.labels, num_classes, device)
        result.metrics[f"{SSL}/finetune_top1"] = top1
    if two_d is not None and ev.plots and ssl_held_out is not None and len(ssl_held_out) > 1:
        idx = torch.randperm(len(ssl_held_out), generator=torch.Generator().manual_seed(ev.seed))[: ev.tsne_samples]
        result.embedding_2d = two_d(ssl_held_out[idx].numpy(), ev.seed)
        result.embedding_labels = test.labels[idx].numpy() if test is not None else None
    return result


def _labelled_protocols(
    cfg: PipelineConfig,
    feats: tuple[Tensor, Tensor],
    train: LabelledSplit,
    test: LabelledSplit,
    num_classes: int,
    keep: DatasetResult | None,
) -> tuple[dict[str, float], Tensor | None]:
    """kNN, linear and few-shot metrics for one encoder, and the first kNN setting's per-image top-1
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
    return out, hits
