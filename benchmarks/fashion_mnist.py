"""Quality benchmark: self-supervised pretraining on Fashion-MNIST within a fixed time budget.

One run, all numbers side by side: ingest the real Fashion-MNIST (Debian's ``dataset-fashion-mnist``
IDX files; 60,000 train and 10,000 test images, 10 classes), pretrain with sslpipe's own stage code
(Ray Train, ``train.time_budget_s`` re-plans the run to the epochs that fit the budget), then
evaluate the encoder with kNN (k=20, T=0.07 and k=200, T=0.1) and a linear probe next to the
same backbone at random initialisation and raw pixels. Labels are used only for evaluation.

    python benchmarks/fashion_mnist.py --budget-min 20
    python benchmarks/fashion_mnist.py --budget-min 40 --method byol   # another method, same model and views
    python benchmarks/fashion_mnist.py --budget-min 2 --limit 5000 --set train.batch_size=128   # smoke run

The pixel kNN baseline on the full test set is about 85-86%; the goal is an encoder that beats it
within a 20-minute budget on a 2-core CPU. Prints a table and writes ``results.json`` in the work
folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sslcore.config import PipelineConfig, load_config
from sslcore.data.ingest import IngestResult, ingest
from sslcore.evaluation.protocols import evaluate_encoders
from sslcore.methods import METHODS, check_method_backbone
from sslcore.resources import available_cpus
from sslcore.train import backbone_state_dict

if TYPE_CHECKING:
    from tasks.ray_train import TrainOutcome
    from tasks.records import IngestRecord

# Chosen for a 2-core CPU: timm's resnet10t with its stock stem at 32 px runs SimCLR at about 420
# images/s on the default layout (two Ray Train workers of one core, views made batched in the
# training process): 8-9 epochs of Fashion-MNIST in 20 minutes. Crops from a fifth of the image: at
# 20 minutes they tie crops from half of it, which solve SimCLR's task by the third epoch, and they
# keep gaining with the budget: kNN 0.8544, 0.8624, 0.8672 at 20, 40, 60 minutes (docs/evaluation.md).
MODEL_AND_VIEWS = [  # benchmarks/soak.py trains the same
    "model.backbone=resnet10t",
    "model.small_image_stem=false",
    "model.image_size=32",
    "augment.hflip_p=0.5",
    "augment.crop_scale=[0.2, 1.0]",
]
# Settings per method (--method); a method not listed trains on its config defaults.
METHOD_SETTINGS: dict[str, list[str]] = {
    # screened: 0.05 > 0.1 > 0.2 > 0.5 for the k=20 kNN (docs/evaluation.md)
    "simclr": ["method.temperature=0.05"],
    # the head widths of lightly's CIFAR-10 benchmark: the reference's 4096 costs CPU time here
    "byol": ["method.projection_hidden_dim=1024", "method.predictor_hidden_dim=1024"],
}


def recipe(method: str = "simclr") -> list[str]:
    """The model, views and method settings as ``--set`` overrides."""
    return [*MODEL_AND_VIEWS, f"method.name={method}", *METHOD_SETTINGS.get(method, [])]


RECIPE = recipe()
DEFAULTS = [  # besides the recipe
    "train.batch_size=256",
    "train.epochs=200",  # an upper bound: the time budget decides
    "train.warmup_epochs=1",
    "train.knn_monitor_samples=2000",
    "eval.fewshot_shots=[10]",
    "eval.fewshot_seeds=2",
    "eval.plots=false",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-min", type=float, default=20.0, help="Pretraining time budget in minutes.")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The method, data, work folder and overrides (shared with ``time_to_accuracy.py``)."""
    parser.add_argument(
        "--method",
        default="simclr",
        choices=METHODS.names(),
        help="Self-supervised method, with its settings from METHOD_SETTINGS (default: simclr).",
    )
    add_data_arguments(parser)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data, work folder and overrides (shared with ``zoo.py``, which takes several methods)."""
    parser.add_argument("--path", default="/usr/share/datasets/fashion-mnist", help="Folder with the IDX files.")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N images of each split.")
    parser.add_argument("--work", default=None, help="Work folder (default: a temporary one, kept).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Extra config KEY=VALUE.")


def build_config(args: argparse.Namespace, work: Path) -> PipelineConfig:
    """The run's config; a typo, or a method the backbone cannot train, fails here, before any work."""
    source = ["ingest.source.kind=fashion_mnist", f"ingest.source.path={args.path}"]
    if args.limit:
        source.append(f"ingest.source.limit={args.limit}")
    cfg = load_config(
        None,
        [
            f"work_dir={work}",
            *source,
            *recipe(args.method),
            *DEFAULTS,
            f"train.time_budget_s={args.budget_min * 60}",
            *args.overrides,
        ],
    )
    check_method_backbone(cfg)
    return cfg


def ingest_record(cfg: PipelineConfig) -> tuple[IngestResult, IngestRecord]:
    """Ingest (reused when the shards exist) and the record the pretrain stage names its run after."""
    from tasks.records import IngestRecord

    start = time.perf_counter()
    shards = ingest(cfg.ingest, cfg.shard_dir, storage=cfg.storage)
    m = shards.manifest
    record = IngestRecord(
        shard_folder=shards.folder,
        manifest_path=f"{shards.folder}/manifest.json",
        fingerprint=m.fingerprint,
        samples={k: v.samples for k, v in m.splits.items()},
        num_classes=m.num_classes,
        rejected=sum(m.rejects.values()),
        reused=shards.reused,
        duration_s=time.perf_counter() - start,
    )
    return shards, record


def pretrain(cfg: PipelineConfig, folder: str, record: IngestRecord, work: Path) -> tuple[TrainOutcome, float]:
    """The pretrain stage's Ray Train run on a local Ray; returns it and its wall-clock seconds, Ray's and the
    workers' start-up included."""
    from tasks import ray_train  # Ray only when needed
    from tasks.pretrain import run_name_for
    from tasks.train_worker import WorkerJob

    ray_train.connect(None)
    start = time.perf_counter()
    outcome = ray_train.fit(WorkerJob.planned(cfg, folder, str(work / "ray_results"), run_name_for(cfg, record)))
    return outcome, time.perf_counter() - start


@dataclass(frozen=True)
class Scored:
    """One pretrain stage run and its evaluation on the test split."""

    outcome: TrainOutcome
    pretrain_s: float  # wall-clock, Ray's and the workers' start-up included
    metrics: dict[str, float]  # evaluate_encoders' metrics, ``fashion_mnist/<encoder>/<protocol>``
    eval_s: float

    def summary(self) -> dict[str, float | int]:
        """The training side of a result row (shared by the curve and the zoo)."""
        last = self.outcome.history[-1]
        return {
            "wall_min": round(self.pretrain_s / 60, 2),
            "steps": self.outcome.steps,
            "epochs": round(last["epoch"], 2),
            "images_per_s": round(last["images_per_s"], 1),
            "loss": round(last["loss"], 4),
            "eval_s": round(self.eval_s, 1),
        }


def train_and_score(cfg: PipelineConfig, shards: IngestResult, record: IngestRecord, work: Path) -> Scored:
    """Pretrain (:func:`pretrain`), then evaluate the checkpoint with every protocol ``cfg.eval`` names."""
    outcome, pretrain_s = pretrain(cfg, shards.folder, record, work)
    start = time.perf_counter()
    state = backbone_state_dict(outcome.checkpoint_path, cfg.storage)
    report = evaluate_encoders(cfg, [("fashion_mnist", shards.manifest, shards.folder)], state, device="cpu")
    return Scored(outcome, pretrain_s, report.metrics, time.perf_counter() - start)


def machine_line() -> str:
    return f"machine: {platform.processor() or platform.machine()}, {available_cpus()} CPUs, torch {torch.__version__}"


def main() -> None:
    args = parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(args.work or tempfile.mkdtemp(prefix="sslpipe-fmnist-")).resolve()
    cfg = build_config(args, work)
    print(machine_line())
    print(f"work folder: {work}")
    print(f"recipe: {' '.join(recipe(args.method))}" + (f" {' '.join(args.overrides)}" if args.overrides else ""))

    shards, record = ingest_record(cfg)
    m = shards.manifest
    print(f"ingest: {dict((k, v.samples) for k, v in m.splits.items())} in {record.duration_s:.0f} s")
    scored = train_and_score(cfg, shards, record, work)
    outcome, pretrain_s, metrics, eval_s = scored.outcome, scored.pretrain_s, scored.metrics, scored.eval_s
    history = outcome.history
    print(
        f"pretrain: {history[-1]['epoch']:.2f} epochs, {outcome.steps} steps in {pretrain_s / 60:.1f} min "
        f"(budget {args.budget_min} min for the epochs; Ray and worker start-up come on top)"
    )
    for h in history:
        knn = f"  monitor kNN {h['knn_top1']:.3f}" if "knn_top1" in h else ""
        print(f"  epoch {h['epoch']:6.2f}  loss {h['loss']:.3f}{knn}  {h['images_per_s']:.0f} img/s")

    rows = [("knn_k20_top1", "kNN k=20"), ("knn_k200_top1", "kNN k=200"), ("linear_top1", "linear probe")]
    rows += [(f"fewshot_{n}shot_mean", f"{n}-shot probe") for n in cfg.eval.fewshot_shots]
    rows += [("health_rankme", "RankMe")]
    print(
        f"\nFashion-MNIST test accuracy ({int(metrics['fashion_mnist/test_samples'])} images), "
        f"evaluation {eval_s:.0f} s"
    )
    print(f"{'protocol':<15}{'sslpipe':>10}{'random init':>13}{'raw pixels':>12}")
    for key, label in rows:
        cells = [metrics.get(f"fashion_mnist/{enc}/{key}") for enc in ("ssl", "random_init", "pixels")]
        if all(c is None for c in cells):  # a protocol the config turned off
            continue
        print(
            f"{label:<15}"
            + "".join(
                f"{c:>{w}.4f}" if c is not None else f"{'-':>{w}}" for c, w in zip(cells, (10, 13, 12), strict=True)
            )
        )
    pixel_knn = metrics.get("fashion_mnist/pixels/knn_k20_top1")
    ssl_knn = metrics["fashion_mnist/ssl/knn_k20_top1"]
    if pixel_knn is not None:
        verdict = "beats" if ssl_knn > pixel_knn else "does not beat"
        p = metrics["fashion_mnist/ssl/knn_k20_vs_pixels_p"]
        print(
            f"\nsslpipe kNN {ssl_knn:.4f} {verdict} the raw-pixel kNN {pixel_knn:.4f} ({ssl_knn - pixel_knn:+.4f}; "
            f"McNemar p={p:.2g} on the same test images)"
        )
    out = {
        "budget_min": args.budget_min,
        "epochs": len(history),
        "steps": outcome.steps,
        "pretrain_s": pretrain_s,
        "config": cfg.model_dump(mode="json", exclude={"storage"}),
        "history": history,
        "metrics": metrics,
    }
    (work / "results.json").write_text(json.dumps(out, indent=2))
    print(f"results: {work / 'results.json'}")


if __name__ == "__main__":
    main()
