"""The method zoo on Fashion-MNIST: every registered method under the same time budget, one table.

One command, one run: ingest Fashion-MNIST once, then for each method and each backbone family it trains
on (ResNet for every method that accepts one; a small ViT for the methods that need patch tokens, and
DINO and MoCo v3 on both) a fresh pretrain stage run (Ray Train, ``train.time_budget_s`` re-planning the
schedule to the budget), scored on the *test* split by kNN (k=20, k=200), a linear probe, a 10-shot probe
and RankMe, next to each family's random-init backbone and raw pixels (each evaluated once).

    python benchmarks/zoo.py --budget-min 20                          # every method
    python benchmarks/zoo.py --budget-min 5 --methods simclr vicreg   # some of them
    python benchmarks/zoo.py --budget-min 1 --limit 5000 --families resnet   # a smoke run

Per-method settings come from ``fashion_mnist.METHOD_SETTINGS`` (the method's config defaults otherwise).
Prints a table, writes ``zoo.json`` and ``zoo.png`` (bars per protocol) in the work folder. Each finished
run is appended to ``zoo-runs.jsonl`` there as it ends: running the same command on the same ``--work``
again (after a crash, or to add methods) reuses the finished runs and resumes an interrupted one from its
newest checkpoint (the stage's Ray Train run is named after its data and config).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_mnist

from sslcore.config import PipelineConfig
from sslcore.methods import METHODS
from sslcore.plots import grouped_bars
from sslcore.resources import available_cpus

# The backbone of each family, as overrides on top of fashion_mnist.MODEL_AND_VIEWS (views stay the same).
FAMILIES: dict[str, list[str]] = {
    "resnet": [],  # fashion_mnist's ResNet-10-T at 32 px
    # timm's ViT-Tiny (12 blocks, width 192) on 4-px patches: 64 tokens at 32 px
    "vit": ["model.backbone=vit_tiny_patch16_224", "model.patch_size=4"],
}
ON_BOTH = ("dino", "moco_v3")  # the methods their papers run on ResNets and ViTs alike
PROTOCOLS = [
    ("knn_k20_top1", "kNN k=20"),
    ("knn_k200_top1", "kNN k=200"),
    ("linear_top1", "linear"),
    ("fewshot_10shot_mean", "10-shot"),
    ("health_rankme", "RankMe"),
]


def families_for(method: str) -> list[str]:
    """The backbone families a method is benchmarked on."""
    if METHODS.get(method).requires_vit:
        return ["vit"]
    return ["resnet", "vit"] if method in ON_BOTH else ["resnet"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-min", type=float, default=20.0, help="Pretraining budget per run, in minutes.")
    parser.add_argument("--methods", nargs="+", default=["all"], help="Method names, or 'all' (default).")
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=sorted(FAMILIES))
    fashion_mnist.add_data_arguments(parser)
    args = parser.parse_args(argv)
    if args.budget_min <= 0:
        parser.error("--budget-min must be positive")
    names = METHODS.names() if args.methods == ["all"] else args.methods
    unknown = sorted(set(names) - set(METHODS.names()))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS.names())}")
    args.runs = [(m, f) for m in dict.fromkeys(names) for f in families_for(m) if f in args.families]
    if not args.runs:
        parser.error("no method trains on the chosen --families")
    return args


def run_config(args: argparse.Namespace, work: Path, method: str, family: str, baselines: list[str]) -> PipelineConfig:
    one = argparse.Namespace(
        **{
            **vars(args),
            "method": method,
            "overrides": [*FAMILIES[family], f"eval.baselines={json.dumps(baselines)}", *args.overrides],
        }
    )
    return fashion_mnist.build_config(one, work)


def plan(args: argparse.Namespace, work: Path) -> list[tuple[str, str, PipelineConfig]]:
    """A config per run; the first run of a family evaluates its random init, the first run of all raw pixels.
    Every typo, and every method a family's backbone cannot train, fails here, before any work."""
    runs, seen = [], set()
    for method, family in args.runs:
        baselines = [] if family in seen else ["random_init"]
        if not seen:
            baselines.append("pixels")
        seen.add(family)
        runs.append((method, family, run_config(args, work, method, family, baselines)))
    return runs


def main() -> None:
    args = parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(args.work or tempfile.mkdtemp(prefix="sslpipe-zoo-")).resolve()
    runs = plan(args, work)
    print(fashion_mnist.machine_line())
    print(f"work folder: {work}\nbudget: {args.budget_min} min per run; runs: {len(runs)}")
    shards, record = fashion_mnist.ingest_record(runs[0][2])
    print(f"ingest: {record.samples} in {record.duration_s:.0f} s")

    from tasks.pretrain import run_name_for

    log = work / "zoo-runs.jsonl"
    done = {}
    if log.exists():
        done = {(r := json.loads(line))["run_key"]: r for line in log.read_text().splitlines() if line.strip()}
    rows: list[dict] = []
    baselines: dict[str, dict] = {}
    for method, family, cfg in runs:
        key = f"{run_name_for(cfg, record)}/{cfg.train.time_budget_s}/{','.join(cfg.eval.baselines)}"
        if key in done:
            row = done[key]
            print(f"\n== {method} on {family}: finished earlier, reused from {log.name} ==", flush=True)
            rows.append(row)
            baselines |= row["baselines"]
            continue
        print(f"\n== {method} on {family} ({cfg.model.backbone}) ==", flush=True)
        scored = fashion_mnist.train_and_score(cfg, shards, record, work)
        metrics = scored.metrics
        row = {
            "method": method,
            "family": family,
            "backbone": cfg.model.backbone,
            **scored.summary(),
            **{k: metrics.get(f"fashion_mnist/ssl/{k}") for k, _ in PROTOCOLS},
            "knn_k20_vs_pixels_p": metrics.get("fashion_mnist/ssl/knn_k20_vs_pixels_p"),
            "baselines": {  # those this run evaluated
                name: {k: metrics.get(f"fashion_mnist/{enc}/{k}") for k, _ in PROTOCOLS}
                for enc, name in (("random_init", f"random init ({family})"), ("pixels", "raw pixels"))
                if f"fashion_mnist/{enc}/knn_k20_top1" in metrics
            },
            "run_key": key,
        }
        rows.append(row)
        baselines |= row["baselines"]
        with log.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    print(f"\nFashion-MNIST test accuracy, {args.budget_min:g} min of pretraining per run")
    head = f"{'method':<10}{'backbone':<22}{'img/s':>7}{'steps':>7}{'epochs':>7}{'loss':>8}"
    print(head + "".join(f"{label:>10}" for _, label in PROTOCOLS))

    def cells(values: dict) -> str:
        return "".join(f"{values[k]:>10.4f}" if values.get(k) is not None else f"{'-':>10}" for k, _ in PROTOCOLS)

    for r in rows:
        print(
            f"{r['method']:<10}{r['backbone'][:21]:<22}{r['images_per_s']:>7.0f}{r['steps']:>7}{r['epochs']:>7.2f}"
            f"{r['loss']:>8.3f}" + cells(r)
        )
    for name, values in baselines.items():
        print(f"{name:<32}{'':>29}" + cells(values))
    out = work / "zoo.json"
    out.write_text(
        json.dumps({"budget_min": args.budget_min, "overrides": args.overrides, "rows": rows, "baselines": baselines})
    )
    bars = {f"{r['method']} ({r['family']})": [r[k] for k, _ in PROTOCOLS[:4]] for r in rows}
    bars |= {name: [v[k] for k, _ in PROTOCOLS[:4]] for name, v in baselines.items()}
    png = grouped_bars(
        bars,
        [label for _, label in PROTOCOLS[:4]],
        work / "zoo.png",
        title=f"Fashion-MNIST test accuracy, {args.budget_min:g} min per method, {available_cpus()} CPUs",
    )
    print(f"results: {out}\nplot: {png}")


if __name__ == "__main__":
    main()
