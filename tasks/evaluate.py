"""Evaluate stage: transfer metrics of the pretrained backbone next to its baselines, plus plots.

The ingested data is always evaluated first (by the label-free protocols alone when it has no
labels); every ``eval.datasets`` entry is evaluated after it, from the shards the ingest stage
wrote for it (``IngestRecord.eval_datasets``) or the shards its ``path`` names."""

from __future__ import annotations

import json
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
from sslcore.evaluation.plan import dataset_names, source_dataset_name
from sslcore.evaluation.protocols import EvalReport, EvaluationError, evaluate_encoders
from sslcore.methods import build_method
from sslcore.plots import confusion_matrix, embedding_map, view_grid
from sslcore.train import backbone_state_dict
from tasks.errors import retry_unless_user_error
from tasks.faults import inject
from tasks.records import EvaluateRecord, IngestRecord, PretrainRecord

ENCODERS = ("ssl", "random_init", "pixels")


def default_dataset_name(config: PipelineConfig) -> str:
    """The ingested data's metric prefix: the source folder's name, else the source kind."""
    return source_dataset_name(config.ingest.source)


def dataset_folders(config: PipelineConfig, ingested: IngestRecord) -> list[tuple[str, str]]:
    """``(name, shard folder)`` of every dataset to evaluate: the ingested data first, then each
    ``eval.datasets`` entry (its ingested shards, or for a ``path`` entry the path as given)."""
    names = dataset_names(config)  # raises on a name clash
    refs = [(names[0], ingested.shard_folder)]
    for d in config.eval.datasets:
        folder = ingested.eval_datasets.get(d.name) or d.path
        if folder is None:
            raise EvaluationError(
                f"eval dataset '{d.name}' has a source but the ingest record holds no shards for it: "
                f"run the ingest stage again (sslpipe ingest)"
            )
        refs.append((d.name, folder))
    return refs


def tsne(features: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    return TSNE(2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(features)


def augmented_views(config: PipelineConfig, manifest: Manifest, folder: str, path: Path, n: int = 6) -> Path:
    """What the model was trained on: a few training images and the method's own views of them."""
    from PIL import Image

    images, _ = load_split_arrays(manifest, folder, "train", config.storage, limit=n)
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
    """One row per dataset and protocol, one column per encoder; label-free rows for every dataset."""
    rows = []
    for ds in report.datasets:
        protocols = sorted({k.split("/", 1)[1] for k in ds.metrics if k.startswith("ssl/")})
        for protocol in protocols:
            row: dict[str, object] = {"dataset": ds.name, "labelled": ds.labelled, "protocol": protocol}
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
    """kNN, linear probe, few-shot (and fine-tuning if configured) on every labelled dataset;
    health and self-retrieval on every dataset."""
    inject("evaluate")
    start = time.perf_counter()
    own = pretrain.ingest.shard_folder
    refs = dataset_folders(config, pretrain.ingest)
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
            if ds.embedding_2d is not None:
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
    create_markdown_artifact(key="evaluation-summary", markdown=summary_markdown(report))
    return EvaluateRecord(
        pretrain=pretrain,
        metrics=report.metrics,
        headline=report.headline,
        baseline=report.baseline,
        datasets=[ds.name for ds in report.datasets],
        data_fingerprints={name: manifest.fingerprint for name, manifest, _ in datasets},
        data_uris={name: path for name, _, path in datasets},
        artifacts=artifacts,
        labelled=report.labelled,
        protocols={ds.name: list(ds.protocols) for ds in report.datasets},
        duration_s=time.perf_counter() - start,
    )


def summary_markdown(report: EvalReport) -> str:
    """The headline next to its baseline, which protocols ran where, and a plain note when no
    dataset had labels."""
    base = f" vs random init {report.metrics[report.baseline]:.4f}" if report.baseline else ""
    lines = [f"### Evaluation\n`{report.headline}` = **{report.metrics[report.headline]:.4f}**{base}\n"]
    if not report.labelled:
        lines.append(
            "label-free evaluation only: no labelled dataset (kNN, linear and few-shot probes need labels; "
            "add a labelled `eval.datasets` entry to measure them)\n"
        )
    lines += [
        f"- `{ds.name}` ({'labelled' if ds.labelled else 'no labels'}): {', '.join(ds.protocols)}"
        for ds in report.datasets
    ]
    return "\n".join(lines) + "\n"
