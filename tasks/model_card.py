"""The model card: what the encoder is, what it was trained on, how it scores, and its limits."""

from __future__ import annotations

from sslcore.backbones import stock_timm
from sslcore.config import PipelineConfig
from sslcore.evaluation.plan import is_labelled_metric
from tasks.records import EvaluateRecord

ENCODERS = (("ssl", "this encoder"), ("random_init", "random init"), ("pixels", "raw pixels"))
LABEL_FREE_ROWS = ("health_rankme", "health_std_ratio", "health_alignment", "health_uniformity", "health_collapsed")
NO_LABELS = (
    "No labelled evaluation was possible: the data has no labels, so kNN, linear probe and few-shot were not "
    "run; add a labelled `eval.datasets` entry to measure them."
)

# Loads the run's timm/ folder with timm, safetensors and PIL alone; tests/registry/test_timm_export.py runs
# it as written and compares with the pyfunc, and docs/registry.md shows it verbatim.
TIMM_SNIPPET = """\
import json

import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from timm.data import create_transform, resolve_data_config

folder = "timm"  # the run's timm/ artifacts: mlflow.artifacts.download_artifacts(run_id=..., artifact_path="timm")
paths = ["cat.png", "dog.png"]  # your images

with open(f"{folder}/config.json") as f:
    cfg = json.load(f)
model = timm.create_model(cfg["architecture"], num_classes=0, **cfg["model_args"])
model.load_state_dict(load_file(f"{folder}/backbone.safetensors"))
model.eval()
transform = create_transform(**resolve_data_config(pretrained_cfg=cfg["pretrained_cfg"]))
with torch.no_grad():
    emb = model(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths]))  # float32 (N, D)
"""
SSLCORE_LOADER = 'sslcore.inference.Encoder.load("timm/encoder.json", "timm/backbone.safetensors")'


def dataset_labelled(evaluation: EvaluateRecord, dataset: str) -> bool:
    """Whether a dataset was scored with labels: from its protocols, or (older records) its metrics."""
    ran = evaluation.protocols.get(dataset)
    if ran is not None:
        return any(p in ran for p in ("knn", "linear", "fewshot", "finetune"))
    return any(k.startswith(f"{dataset}/ssl/") and is_labelled_metric(k) for k in evaluation.metrics)


def _protocols(evaluation: EvaluateRecord) -> str:
    lines = []
    for ds in evaluation.datasets:
        ran = evaluation.protocols.get(ds)
        state = "labelled" if dataset_labelled(evaluation, ds) else "no labels"
        lines.append(f"- `{ds}` ({state}): {', '.join(ran) if ran else 'see the table below'}")
    if not evaluation.labelled:
        lines.append(f"\n{NO_LABELS}")
    return "\n".join(lines)


def _results(evaluation: EvaluateRecord) -> str:
    lines = []
    m = evaluation.metrics
    for ds in evaluation.datasets:
        prefix = f"{ds}/ssl/"
        protocols = sorted(k[len(prefix) :] for k in m if k.startswith(prefix) and k.endswith(("top1", "_mean")))
        if not dataset_labelled(evaluation, ds):  # the label-free numbers are all there is: show them all
            protocols += [p for p in LABEL_FREE_ROWS if f"{prefix}{p}" in m]
        lines += [
            f"\n**{ds}** ({int(m.get(f'{ds}/train_samples', 0))} train / {int(m.get(f'{ds}/test_samples', 0))} "
            "test images)\n",
            "| protocol | " + " | ".join(label for _, label in ENCODERS) + " |",
            "|---|" + "---:|" * len(ENCODERS),
        ]
        for p in protocols:
            cells = [m.get(f"{ds}/{enc}/{p}") for enc, _ in ENCODERS]
            lines.append(f"| {p} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in cells) + " |")
    return "\n".join(lines)


def _headline_note(evaluation: EvaluateRecord) -> str:
    if "/retrieval_" not in evaluation.headline:
        return ""
    ds = evaluation.headline.split("/", 1)[0]
    n = int(evaluation.metrics.get(f"{ds}/retrieval_samples", 0))
    return (
        f"\n\nThe label-free headline: the share of {n} held-out images whose augmented view finds the image "
        f"itself as its nearest neighbour (chance: {1 / max(n, 1):.4f})."
    )


def _limits(evaluation: EvaluateRecord) -> str:
    if evaluation.labelled:
        return "kNN and linear probes measure frozen features; fine-tuning can rank encoders differently."
    return (
        "Self-retrieval measures invariance to the training augmentations among held-out images, not how well "
        "the features separate classes: a high score is necessary for a useful encoder, not sufficient."
    )


def _stem(config: PipelineConfig) -> str:
    if config.model.small_image_stem:
        return "small-image stem"
    return "stock stem" if config.model.stem_pool else "stock stem without its max-pool"


def _loading(config: PipelineConfig) -> str:
    size = config.model.image_size
    if stock_timm(config.model):
        return f"""`timm/` holds timm's own `config.json` beside the weights: timm, safetensors and PIL alone
rebuild the encoder and its preprocessing, and give the pyfunc's embeddings (to float rounding for
{size}x{size} images; PIL resizes other sizes in whole grey levels, torch in floats, so they differ slightly):

```python
{TIMM_SNIPPET}```

`model.reset_classifier(num_classes)` then adds a head to fine-tune."""
    return f"""This encoder ({_stem(config)}) is not a stock timm architecture: no `timm.create_model` argument
expresses its stem, so `timm/` has no timm `config.json`. timm alone would build the stock stem, into which these
weights either do not load or load and give other embeddings. Load it with the pyfunc above, or with the
`sslcore` package the pyfunc ships (its `code/` folder): `{SSLCORE_LOADER}`."""


def model_card(config: PipelineConfig, evaluation: EvaluateRecord) -> str:
    pretrain, ingest = evaluation.pretrain, evaluation.pretrain.ingest
    headline = evaluation.metrics[evaluation.headline]
    base = f" (random init: {evaluation.metrics[evaluation.baseline]:.4f})" if evaluation.baseline else ""
    collapsed = [d for d in evaluation.datasets if evaluation.metrics.get(f"{d}/ssl/health_collapsed") == 1.0]
    return f"""# sslpipe encoder: {config.method.name} on {config.model.backbone}

**{evaluation.headline} = {headline:.4f}**{base}{_headline_note(evaluation)}

## Model
- Method: `{config.method.name}`; backbone: timm `{config.model.backbone}` \
({_stem(config)}), input {config.model.image_size}x{config.model.image_size} RGB,
  normalised with mean {config.augment.mean} and std {config.augment.std}.
- Use: `mlflow.pyfunc.load_model(uri).predict(uint8 images (N, H, W, C))` -> float32 (N, D); the
  weights are also logged as `timm/backbone.safetensors` with `timm/encoder.json`.

## Loading with timm
{_loading(config)}

## Data
- Shards `{ingest.shard_folder}` (manifest fingerprint `{ingest.fingerprint[:16]}`): \
{", ".join(f"{k} {v}" for k, v in ingest.samples.items())} images; {ingest.rejected} rejected, \
{ingest.duplicates} duplicates dropped.
- {
        "Labels were used for evaluation only, never for pretraining."
        if evaluation.labelled
        else "No dataset had labels: pretraining needs none, and evaluation used the label-free protocols only."
    }

## Budget
- {pretrain.epochs} epochs, {pretrain.steps} steps at global batch {config.train.batch_size} on \
{config.ray.num_workers} Ray workers ({"GPU" if config.ray.use_gpu else "CPU"}); {pretrain.duration_s:.0f} s, \
{pretrain.images_per_s:.0f} images/s; final loss {pretrain.final_loss:.4f}.

## Evaluation protocols
{_protocols(evaluation)}

## Results vs baselines
{_results(evaluation)}

## Known limits
- Scores hold for the evaluation data above at {config.model.image_size} px; other domains and resolutions
  need their own evaluation.
- {_limits(evaluation)}
- {"Collapse was flagged on: " + ", ".join(collapsed) if collapsed else "No representation collapse was flagged."}
"""
