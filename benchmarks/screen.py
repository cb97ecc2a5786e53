"""Screening harness for issue #20's levers: pretrain in one process on Fashion-MNIST's *train* split and
score on a validation split carved from it, so that no recipe is chosen on the test split.

The train split's 60,000 images are split once (seeded): 50,000 are the training set and the kNN bank,
10,000 are validation queries. The method, its views (batched, :mod:`sslcore.device_augment`), optimizer and
schedule are the stage's own code (``build_method``, ``device_views``, ``build_optimizer``, ``lr_at``,
``train_step``); what differs from the stage is only the plumbing: images are held in memory as uint8 and
there is no Ray, no shards and no checkpoint. Use it to compare recipes side by side; quote the stage
(``benchmarks/fashion_mnist.py``) for final, test-split numbers.

    python benchmarks/screen.py --minutes 4 --eval-at 1 2 4 --set method.temperature=0.1
    python benchmarks/screen.py --minutes 4 --cpu-bf16          # bf16 autocast on CPU (oneDNN)
    python benchmarks/screen.py --minutes 4 --progressive 16 0.5  # 16 px views for the first 2 minutes

Prints one line per evaluation (minutes of training, steps, images/s, loss, val kNN k=20) and a JSON line
at the end (``--out`` appends it to a file). Evaluation time is not counted in the training minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sslcore.config import load_config
from sslcore.data.ingest import ingest
from sslcore.data.sources import _fashion_split
from sslcore.data.stream import load_split_arrays
from sslcore.device_augment import device_views
from sslcore.evaluation.knn import knn_accuracy
from sslcore.evaluation.linear import linear_probe
from sslcore.methods import as_method, build_method
from sslcore.train import build_optimizer, lr_at, plan_steps, train_step
from sslcore.transforms import preprocess

BASE = [  # benchmarks/fashion_mnist.py's recipe and defaults
    "model.backbone=resnet10t",
    "model.small_image_stem=false",
    "model.image_size=32",
    "augment.hflip_p=0.5",
    "augment.crop_scale=[0.2, 1.0]",
    "method.name=simclr",
    "method.temperature=0.05",
    "train.batch_size=256",
    "train.warmup_epochs=1",
]


def load_fmnist(path: str, val: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST train split as (train images, train labels, val images, val labels), uint8 (N, 28, 28)."""
    images, labels = _fashion_split(path, "train")
    return carve(images, labels.astype(np.int64), val, seed)


def load_digits_train(val: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The embedded default's digits, its *train* split exactly as the pipeline ingests it (the test split is
    never read), as (train, train labels, val, val labels), uint8 (N, 8, 8)."""
    work = Path(tempfile.mkdtemp(prefix="sslpipe-screen-"))
    shards = ingest(load_config(None, []).ingest, str(work / "shards"))
    images, labels = load_split_arrays(shards.manifest, shards.folder, "train", None)
    return carve(np.stack(images)[..., 0], np.asarray(labels, dtype=np.int64), val, seed)


def carve(images: np.ndarray, labels: np.ndarray, val: int, seed: int) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(len(images))
    va, tr = order[:val], order[val:]
    return images[tr], labels[tr], images[va], labels[va]


def to_uint8(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 3, size, size) uint8, resized like the loader's decode."""
    out = []
    for start in range(0, len(images), 4096):
        x = preprocess(images[start : start + 4096, :, :, None], size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        out.append(x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


@torch.no_grad()
def features(backbone: torch.nn.Module, images: np.ndarray, size: int, mean, std, bf16: bool) -> torch.Tensor:
    backbone.eval()
    out = []
    for start in range(0, len(images), 1024):
        x = preprocess(images[start : start + 1024, :, :, None], size, mean, std)
        with cpu_autocast(bf16):
            out.append(backbone(x.contiguous(memory_format=torch.channels_last)).float())
    backbone.train()
    return torch.cat(out)


def cpu_autocast(enabled: bool) -> contextlib.AbstractContextManager[object]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--eval-at", type=float, nargs="*", default=None, help="Minutes at which to evaluate.")
    parser.add_argument("--epochs", type=float, default=None, help="Train this many epochs instead of --minutes.")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--path", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--dataset", choices=["fashion_mnist", "digits"], default="fashion_mnist")
    parser.add_argument("--val", type=int, default=None, help="Validation images (default 10,000; digits 300).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on the CPU for forward and backward.")
    parser.add_argument("--pixels", action="store_true", help="Also print the raw-pixel kNN on the same split.")
    parser.add_argument("--linear", action="store_true", help="Also score a linear probe (the stage's C sweep).")
    parser.add_argument(
        "--progressive",
        nargs=2,
        type=float,
        metavar=("SIZE", "FRACTION"),
        default=None,
        help="Progressive resolution: views of SIZE px for the first FRACTION of the budget (of the steps with "
        "--epochs), then model.image_size.",
    )
    parser.add_argument("--name", default=None)
    parser.add_argument("--out", default=None, help="Append the JSON result to this file.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    base = BASE if args.dataset == "fashion_mnist" else []
    if any(o.startswith("method.name=") for o in args.overrides):  # another method: none of SimCLR's settings
        base = [b for b in base if not b.startswith("method.")]
    cfg = load_config(None, [*base, *args.overrides])
    if args.dataset == "digits":
        xtr, ytr, xva, yva = load_digits_train(args.val or 300, args.seed)
    else:
        xtr, ytr, xva, yva = load_fmnist(args.path, args.val or 10_000, args.seed)
    size, mean, std = cfg.model.image_size, cfg.augment.mean, cfg.augment.std
    model = build_method(cfg).to(memory_format=torch.channels_last)
    method = as_method(model)
    views = device_views(method.view_transform(cfg.augment, size))
    small = (
        None if args.progressive is None else device_views(method.view_transform(cfg.augment, int(args.progressive[0])))
    )
    train = to_uint8(xtr, views.max_size)
    optimizer = build_optimizer(model, cfg.train)
    batch = cfg.train.batch_size
    steps_per_epoch = len(train) // batch
    bank_y, query_y = torch.as_tensor(ytr), torch.as_tensor(yva)

    def knn(bank: torch.Tensor, queries: torch.Tensor) -> float:
        return knn_accuracy(queries, query_y, bank, bank_y, num_classes=10, k=20, temperature=0.07)["top1"]

    def linear(bank: torch.Tensor, queries: torch.Tensor) -> float:
        ev = cfg.eval
        kw = {"cs": ev.linear_c, "max_iter": ev.linear_max_iter, "val_fraction": ev.val_fraction, "seed": ev.seed}
        return linear_probe(bank, bank_y, queries, query_y, 10, **kw).top1

    if args.pixels:
        ptr, pva = (torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float32) / 255 for x in (xtr, xva))
        line = f"raw pixels: val kNN k=20 {knn(ptr, pva):.4f}"  # cosine kNN: the scale does not matter
        print(line + (f", linear {linear(ptr, pva):.4f}" if args.linear else ""))
    budget = args.minutes * 60
    marks = sorted(args.eval_at or [args.minutes])
    fixed = args.epochs is not None
    # A fixed plan (--epochs), or planned like the stage's time budget: the pace so far decides the total steps.
    total = max(1, round(args.epochs * steps_per_epoch)) if fixed else max(1, int(budget / 0.6))
    plan = plan_steps(cfg, len(train), total_steps=total)
    g = torch.Generator().manual_seed(args.seed)
    step, trained_s, images_seen, losses, results = 0, 0.0, 0, [], []
    since = (0, 0.0)  # (step, trained_s) at the last re-plan: the pace of the current phase
    perm = torch.randperm(len(train), generator=g)
    params = sum(p.numel() for p in method.backbone.parameters()) / 1e6
    print(f"setup {time.perf_counter() - t0:.0f} s; {len(xtr)} train, {len(xva)} val images; backbone {params:.2f} M")
    while True:
        if not fixed and (step in (10, 20) or (step % 50 == 0 and step > 0)):
            pace = (trained_s - since[1]) / (step - since[0]) if step > since[0] else trained_s / step
            total = step + max(1, math.floor((budget - trained_s) / pace))
            plan = plan_steps(cfg, len(train), total_steps=total)
            since = (step, trained_s)
        tic = time.perf_counter()
        pos = (step % steps_per_epoch) * batch
        if pos == 0 and step > 0:
            perm = torch.randperm(len(train), generator=g)
        x = train[perm[pos : pos + batch]]
        done_share = step / plan.total_steps if fixed else trained_s / budget  # of the steps, or of the budget
        phase = small if small is not None and done_share < args.progressive[1] else views
        with cpu_autocast(args.cpu_bf16):
            out = train_step(
                model,
                phase(x, generator=g),
                optimizer,
                lr=lr_at(plan, step),
                device=torch.device("cpu"),
                values=method.step_values(step, plan),
                channels_last=True,
            )
        trained_s += time.perf_counter() - tic
        losses.append(out["loss"])
        step += 1
        images_seen += batch
        done = step >= plan.total_steps if fixed else (len(marks) == 1 and step >= plan.total_steps)
        if done or (not fixed and trained_s >= marks[0] * 60):
            tic = time.perf_counter()
            bank = features(method.backbone, xtr, size, mean, std, args.cpu_bf16)
            queries = features(method.backbone, xva, size, mean, std, args.cpu_bf16)
            scores = {"val_knn20": round(knn(bank, queries), 4)}
            if args.linear:
                scores["val_linear"] = round(linear(bank, queries), 4)
            row = {
                "minutes": round(trained_s / 60, 2),
                "steps": step,
                "epochs": round(step / steps_per_epoch, 2),
                "img_s": round(images_seen / trained_s, 1),
                "loss": round(float(np.mean(losses[-50:])), 4),
                **scores,
                "eval_s": round(time.perf_counter() - tic, 1),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
            if fixed or len(marks) == 1:
                break
            marks.pop(0)
    line = {
        "name": args.name,
        "overrides": args.overrides,
        "cpu_bf16": args.cpu_bf16,
        "progressive": args.progressive,
        "minutes": args.minutes,
        "results": results,
    }
    print(json.dumps(line))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
