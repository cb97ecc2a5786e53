"""Time-to-accuracy curve on Fashion-MNIST: the kNN accuracy the pretrain stage reaches per time budget.

One command, one run of this script: ingest Fashion-MNIST once, then for each budget a fresh pretrain
stage run (Ray Train, the recipe of ``benchmarks/fashion_mnist.py``, ``train.time_budget_s`` re-planning
the schedule to the budget), each scored on the *test* split by kNN (k=20 and k=200) next to raw pixels,
with McNemar's p-value against pixels on the same test images. The minutes on the curve are wall-clock
minutes of the whole stage, Ray's and the workers' start-up included; evaluation is timed apart.

    python benchmarks/time_to_accuracy.py                       # budgets 5, 10, 20, 40 minutes
    python benchmarks/time_to_accuracy.py --budgets 1 2 --limit 5000   # a smoke run

Prints a table, writes ``curve.json`` and ``time_to_accuracy.png`` in the work folder and logs both, with
one metric point per budget, to an MLflow run (``$MLFLOW_TRACKING_URI``, else SQLite in the work folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_mnist

from sslcore.config import PipelineConfig
from sslcore.plots import time_to_accuracy
from sslcore.resources import available_cpus

KNN_ONLY = [  # the curve needs kNN and its pixel baseline, not the probes
    "eval.linear_probe=false",
    "eval.health=false",
    "eval.baselines=[pixels]",
    "eval.plots=false",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[5.0, 10.0, 20.0, 40.0], help="Minutes.")
    fashion_mnist.add_run_arguments(parser)
    args = parser.parse_args(argv)
    if any(b <= 0 for b in args.budgets):
        parser.error("--budgets must be positive minutes")
    args.budgets = sorted(set(args.budgets))
    return args


def budget_config(args: argparse.Namespace, work: Path, minutes: float) -> PipelineConfig:
    one = argparse.Namespace(**{**vars(args), "budget_min": minutes, "overrides": [*KNN_ONLY, *args.overrides]})
    return fashion_mnist.build_config(one, work)


def log_to_mlflow(cfg: PipelineConfig, args: argparse.Namespace, rows: list[dict], files: list[Path]) -> str:
    """One MLflow run for the curve: a metric point per budget (step = budget in seconds) and the files."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from tasks.runtime import tracking_uri
    from tasks.tracking import experiment_id

    client = MlflowClient(tracking_uri(cfg))
    run = client.create_run(experiment_id(client, cfg), run_name="time-to-accuracy", tags={"sslpipe.benchmark": "1"})
    run_id = run.info.run_id
    client.log_param(run_id, "budgets_min", json.dumps(args.budgets))
    client.log_param(run_id, "recipe", " ".join(fashion_mnist.recipe(args.method) + args.overrides)[:6000])
    now = int(time.time() * 1000)
    metrics = []
    for r in rows:
        step = round(r["budget_min"] * 60)
        metrics += [Metric(k, float(r[k]), now, step) for k in ("knn_k20_top1", "knn_k200_top1", "wall_min")]
        if r["pixels_knn_k20_top1"] is not None:
            metrics.append(Metric("pixels_knn_k20_top1", float(r["pixels_knn_k20_top1"]), now, step))
    client.log_batch(run_id, metrics=metrics)
    for f in files:
        client.log_artifact(run_id, str(f))
    client.set_terminated(run_id)
    return run_id


def main() -> None:
    args = parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(args.work or tempfile.mkdtemp(prefix="sslpipe-curve-")).resolve()
    configs = [budget_config(args, work, b) for b in args.budgets]  # every typo fails here, before any work
    print(fashion_mnist.machine_line())
    print(f"work folder: {work}\nbudgets (min): {args.budgets}")
    shards, record = fashion_mnist.ingest_record(configs[0])
    print(f"ingest: {record.samples} in {record.duration_s:.0f} s")

    rows: list[dict] = []
    for minutes, cfg in zip(args.budgets, configs, strict=True):
        scored = fashion_mnist.train_and_score(cfg, shards, record, work)
        metrics = scored.metrics
        row = {
            "budget_min": minutes,
            **scored.summary(),
            "knn_k20_top1": metrics["fashion_mnist/ssl/knn_k20_top1"],
            "knn_k200_top1": metrics["fashion_mnist/ssl/knn_k200_top1"],
            "pixels_knn_k20_top1": metrics.get("fashion_mnist/pixels/knn_k20_top1"),
            "vs_pixels_p": metrics.get("fashion_mnist/ssl/knn_k20_vs_pixels_p"),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    pixels = rows[0]["pixels_knn_k20_top1"]
    print(f"\nFashion-MNIST test kNN k=20 per budget (raw pixels {pixels:.4f})" if pixels is not None else "")
    print(
        f"{'budget':>7}{'wall min':>10}{'epochs':>8}{'img/s':>8}{'kNN k=20':>10}{'k=200':>8}{'vs pixels':>11}{'p':>9}"
    )
    for r in rows:
        gain = f"{r['knn_k20_top1'] - pixels:+.4f}" if pixels is not None else "-"
        p = f"{r['vs_pixels_p']:.2g}" if r["vs_pixels_p"] is not None else "-"
        print(
            f"{r['budget_min']:>7g}{r['wall_min']:>10.2f}{r['epochs']:>8.2f}{r['images_per_s']:>8.0f}"
            f"{r['knn_k20_top1']:>10.4f}{r['knn_k200_top1']:>8.4f}{gain:>11}{p:>9}"
        )
    curve = work / "curve.json"
    curve.write_text(
        json.dumps({"recipe": fashion_mnist.recipe(args.method), "overrides": args.overrides, "rows": rows})
    )
    png = time_to_accuracy(
        [r["wall_min"] for r in rows],
        [r["knn_k20_top1"] for r in rows],
        pixels,
        work / "time_to_accuracy.png",
        title=f"Fashion-MNIST, {args.method}, {available_cpus()} CPUs",
        ylabel="test kNN k=20 top-1",
    )
    run_id = log_to_mlflow(configs[0], args, rows, [curve, png])
    print(f"curve: {curve}\nplot: {png}\nMLflow run {run_id} ({configs[0].mlflow.experiment})")


if __name__ == "__main__":
    main()
