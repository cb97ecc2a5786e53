"""Evaluate stage: transfer metrics of the pretrained backbone next to its baselines, plus plots."""

from __future__ import annotations

import json
import posixpath
import re
import time
from pathlib import Path

import numpy as np
import torch
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from sslcore.config import PipelineConfig
from sslcore.data.manifest import Manifest, read_manifest
from sslcore.data.stream import load_split_arrays
from sslcore.evaluation.protocols import EvalReport, evaluate_encoders
from sslcore.methods import build_method
from sslcore.plots import confusion_matrix, embedding_map, view_grid
from sslcore.train import backbone_state_dict
from tasks.errors import retry_unless_user_error
from tasks.faults import inject
from tasks.records import EvaluateRecord, PretrainRecord

ENCODERS = ("ssl", "random_init", "pixels")


def default_dataset_name(config: PipelineConfig) -> str:
    source = config.ingest.source
    path = getattr(source, "path", None)
    name = posixpath.basename(str(path).rstrip("/")) if path else ""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or source.kind


def tsne(features: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    return TSNE(2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(features)


def augmented_views(config: PipelineConfig, manifest: Manifest, folder: str, path: Path, n: int = 6) -> Path:
    """What the model was trained on: a few training images and the method's own views of them."""
    from PIL import Image

    images, _ = load_split_arrays(manifest, folder, "train", config.storage)
    transform = build_method(config).view_transform(config.augment, config.model.image_size)
    mean = torch.tensor(config.augment.mean).view(3, 1, 1)
    std = torch.tensor(config.augment.std).view(3, 1, 1)
    torch.manual_seed(config.eval.seed)
    rows = []
    for image in images[:n]:
        views = transform(Image.fromarray(image))
        shown = [(v * std + mean).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy() for v in views[:8]]
        rows.append([image, *shown])
    return view_grid(rows, path, title=f"{config.method.name} views")


def _table(report: EvalReport) -> list[dict[str, object]]:
    rows = []
    for ds in report.datasets:
        protocols = sorted({k.split("/", 1)[1] for k in ds.metrics if k.startswith("ssl/")})
        for protocol in protocols:
            row: dict[str, object] = {"dataset": ds.name, "protocol": protocol}
            for enc in ENCODERS:
                value = ds.metrics.get(f"{enc}/{protocol}")
                if value is not None:  # p-values (*_p) keep 2 significant digits, accuracies 4 decimals
                    value = float(f"{value:.2g}") if protocol.endswith("_p") else round(value, 4)
                row[enc] = value
            rows.append(row)
    return rows


@task(
    name="evaluate",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
    tags=["sslpipe", "evaluate"],
)
def evaluate(config: PipelineConfig, pretrain: PretrainRecord) -> EvaluateRecord:
    """kNN, linear probe, few-shot, health (and fine-tuning if configured) on every dataset."""
    inject("evaluate")
    start = time.perf_counter()
    own = pretrain.ingest.shard_folder
    refs = [(d.name, d.path) for d in config.eval.datasets] or [(default_dataset_name(config), own)]
    datasets = [(name, read_manifest(path, config.storage), path) for name, path in refs]
    state = backbone_state_dict(pretrain.checkpoint_path, config.storage)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = evaluate_encoders(config, datasets, state, device=device, two_d=tsne if config.eval.plots else None)

    out = config.work_path / "eval" / pretrain.run_name
    out.mkdir(parents=True, exist_ok=True)
    artifacts = [str(out / "metrics.json")]
    (out / "metrics.json").write_text(json.dumps(report.metrics, indent=2, sort_keys=True))
    if config.eval.plots:
        for ds in report.datasets:
            if ds.embedding_2d is not None and ds.embedding_labels is not None:
                artifacts.append(
                    str(
                        embedding_map(
                            ds.embedding_2d,
                            ds.embedding_labels,
                            ds.label_names,
                            f"{ds.name}: t-SNE of test embeddings",
                            out / f"{ds.name}_tsne.png",
                        )
                    )
                )
            if ds.confusion is not None:
                artifacts.append(
                    str(
                        confusion_matrix(
                            ds.confusion, ds.label_names, f"{ds.name}: linear probe", out / f"{ds.name}_confusion.png"
                        )
                    )
                )
        manifest = read_manifest(own, config.storage)
        artifacts.append(str(augmented_views(config, manifest, own, out / "augmented_views.png")))

    create_table_artifact(key="evaluation", table=_table(report), description="Transfer results vs baselines")
    base = f" vs random init {report.metrics[report.baseline]:.4f}" if report.baseline else ""
    create_markdown_artifact(
        key="evaluation-summary",
        markdown=f"### Evaluation\n`{report.headline}` = **{report.metrics[report.headline]:.4f}**{base}\n",
    )
    return EvaluateRecord(
        pretrain=pretrain,
        metrics=report.metrics,
        headline=report.headline,
        baseline=report.baseline,
        datasets=[ds.name for ds in report.datasets],
        data_fingerprints={name: manifest.fingerprint for name, manifest, _ in datasets},
        data_uris={name: path for name, _, path in datasets},
        artifacts=artifacts,
        duration_s=time.perf_counter() - start,
    )
