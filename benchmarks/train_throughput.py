"""Training throughput: sslpipe's pretrain stage (real shards through Ray Train) vs a plain PyTorch loop.

SimCLR on the small-image ResNet-18 (32 px, batch 256) and a small ViT (ViT-Tiny with 4 px patches:
64 tokens at 32 px), side by side in one run, the variants alternating within every repeat:

* ``plain``: the compute limit. One process with ``torch.set_num_threads(<all cores>)``, the same
  method, optimizer, batch and step (``sslcore.train.train_step`` with the scheduled values) on one
  batch of real augmented views held in memory (on the device): ``--warmup`` untimed steps, then
  ``--steps`` timed ones.
* ``sslpipe WxC K=k``: the pretrain stage as ``tasks/pretrain.py`` runs it: ``tasks.ray_train.connect``
  (a fresh local Ray every run) and ``tasks.ray_train.fit`` with ``W`` Ray Train workers of ``C`` CPUs
  (DDP: gloo on CPU, nccl on CUDA), streaming Fashion-MNIST shards through ``TrainStream`` and ``k``
  DataLoader processes per worker that decode and augment, on the same cores. Its epochs have
  ``--epoch-steps`` steps; the first is the warm-up and is left out. ``img/s`` is the stage's own
  per-epoch ``images_per_s`` (the time inside the steps); ``wall img/s`` also counts the work between
  epochs (health probe, kNN monitor, checkpoint, ``ray.train.report``), timed by the checkpoints'
  files. With a few steps per epoch that work weighs far more than in a real epoch, so the summary
  also extrapolates it to epochs of ``--epoch-images`` images.
* ``plain+loader K=k`` (``--loader``): the plain loop fed by the stage's ``TrainStream`` +
  ``DataLoader(num_workers=k)``, without Ray or DDP, to separate the cost of loading and augmenting
  from that of Ray and DDP; it also reports the share of its time spent waiting for batches.

Printed per model: the median ``img/s`` of each variant, achieved TFLOP/s (the FLOPs of one forward
and backward of the method per image, both views, counted with ``FlopCounterMode``, times img/s;
against the card's dense bf16 peak on CUDA), the ratio sslpipe / plain (target >= 0.90), and the
stage's fixed costs: Ray start (``connect``), worker group (until the training loop runs in the
workers), first batch (model, DDP, loader processes, first augmented batch), their total, and the
first epoch and the teardown after the last checkpoint.

    python benchmarks/train_throughput.py --repeats 3 --loader               # 2-core CPU: ~5 min a repeat
    python benchmarks/train_throughput.py --quick --steps 1 --warmup 1 --repeats 1   # smoke run
    bash benchmarks/gpu.sh                                                   # one GPU, under 5 minutes
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import os
import platform
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from sslcore.config import FashionMnistSource, PipelineConfig, load_config
from sslcore.data.ingest import ingest
from sslcore.data.manifest import read_manifest
from sslcore.data.stream import TrainStream, shard_urls, train_loader, views_only
from sslcore.device_augment import AugmentedBatches, decode_for_device, device_views
from sslcore.methods import as_method, build_method
from sslcore.resources import available_cpus, training_threads
from sslcore.train import build_optimizer, lr_at, plan_steps, train_step
from sslcore.transforms import MultiView

# SimCLR on each backbone; --quick swaps in small backbones of the same families.
MODELS: dict[str, list[str]] = {
    "resnet": ["model.backbone=resnet18", "model.small_image_stem=true"],
    "vit": ["model.backbone=vit_tiny_patch16_224", "model.patch_size=4"],
}
QUICK_MODELS: dict[str, list[str]] = {
    "resnet": ["model.backbone=resnet10t", "model.small_image_stem=true"],
    "vit": ["model.backbone=test_vit", "model.patch_size=4"],
}
# Dense bf16 tensor-core peaks in TFLOP/s, matched in order against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 125.0),
)
STARTUP_COLUMNS = {
    "ray_connect_s": "ray connect",
    "worker_group_s": "worker group",
    "first_batch_s": "first batch",
    "total_s": "total",
    "first_epoch_s": "first epoch",
    "between_epochs_s": "between epochs",
    "teardown_s": "teardown",
}


@dataclass(frozen=True)
class Rate:
    images_per_s: float
    wall_images_per_s: float = math.nan  # sslpipe: with the work between epochs
    data_wait: float = math.nan  # plain+loader: share of the timed steps spent waiting for batches
    startup: dict[str, float] = field(default_factory=dict)  # sslpipe: fixed costs, seconds


@dataclass(frozen=True)
class Variant:
    model: str
    name: str
    run: Callable[[int], Rate]  # repeat index -> rate


# --------------------------------------------------------------------------- set-up and measures


def bench_config(model: list[str], args: argparse.Namespace, *extra: str) -> PipelineConfig:
    """SimCLR on ``model`` at ``--image-size`` and ``--batch-size``, then ``--set`` and ``extra``."""
    settings = [
        "method.name=simclr",
        f"model.image_size={args.image_size}",
        f"train.batch_size={args.batch_size}",
        f"train.compile={str(args.compile).lower()}",
        *model,
        *args.set,
        *extra,
    ]
    return load_config(None, settings)


def make_shards(root: Path, images: int, source: str) -> tuple[str, int]:
    """Ingest about ``images`` train images; the shard folder and its train sample count.

    ``fashion_mnist``: the first ``images`` of each Fashion-MNIST split (28 px grayscale PNGs);
    ``synthetic``: 32 px RGB PNGs of smooth noise in 10 class folders, for machines without it.
    """
    if source == "fashion_mnist":
        settings = ["ingest.source.kind=fashion_mnist", f"ingest.source.limit={images}"]
    else:
        rng = np.random.default_rng(0)
        for i in range(math.ceil(images / 0.75)):  # the folder source sends 20% to the test split
            coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            path = root / "images" / f"class{i % 10}" / f"{i:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(coarse).resize((32, 32), Image.Resampling.BICUBIC).save(path)
        settings = [
            "ingest.source.kind=folder",
            f"ingest.source.path={root / 'images'}",
            "ingest.source.labels=subfolder",
        ]
    result = ingest(load_config(None, settings).ingest, str(root / "shards"))
    return result.folder, result.manifest.split("train").samples


def stream_of(cfg: PipelineConfig, folder: str, transform: Callable[[Image.Image], list[torch.Tensor]]) -> TrainStream:
    """The train split as one stage worker streams it."""
    manifest = read_manifest(folder)
    return TrainStream(
        shard_urls(manifest, folder, "train"),
        transform,
        rank=0,
        world_size=1,
        seed=cfg.train.seed,
        sizes=[s.samples for s in manifest.split("train").shards],
        batch_size=cfg.train.batch_size,
    )


def view_transform(cfg: PipelineConfig) -> Callable[[Image.Image], list[torch.Tensor]]:
    return as_method(build_method(cfg)).view_transform(cfg.augment, cfg.model.image_size)


def flops_per_image(cfg: PipelineConfig, device: torch.device) -> float:
    """FLOPs of one forward and backward of the method per image (its views together), counted on a
    small batch; attention runs the math kernel so that its matmuls are counted on every device."""
    method = build_method(cfg).to(device)
    batch, size = 4, cfg.model.image_size
    views = [torch.randn(batch, 3, size, size, device=device) for _ in range(2)]
    with FlopCounterMode(display=False) as counter, sdpa_kernel([SDPBackend.MATH]):
        method(views)["loss"].backward()
    return counter.get_total_flops() / batch


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- (a) the plain loop


def plain_loop(
    cfg: PipelineConfig,
    next_batch: Callable[[], list[torch.Tensor]],
    device: torch.device,
    train_samples: int,
    args: argparse.Namespace,
) -> Rate:
    """``--warmup`` + ``--steps`` optimizer steps on ``next_batch()``; the timed steps' rate."""
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg).to(device)
    channels_last = cfg.train.channels_last
    if channels_last:  # as the stage does
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method, cfg.train)
    model: nn.Module = method
    if dist.is_initialized():  # as ray.train.torch.prepare_model wraps it in tasks/train_worker.py
        model = DistributedDataParallel(method, forward_sync_buffers=False)
    if cfg.train.compile:
        model = torch.compile(model)
    plan = plan_steps(cfg, train_samples)
    waited, start = 0.0, time.perf_counter()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            if dist.is_initialized():
                dist.barrier()
            waited, start = 0.0, time.perf_counter()
        before = time.perf_counter()
        views = next_batch()
        waited += time.perf_counter() - before
        train_step(
            model,
            views,
            optimizer,
            lr=lr_at(plan, step),
            device=device,
            amp=cfg.train.amp,
            values=method.step_values(step, plan),
            channels_last=channels_last,
        )
    sync(device)
    elapsed = time.perf_counter() - start
    return Rate(args.steps * cfg.train.batch_size / elapsed, data_wait=waited / elapsed)


def run_plain(cfg: PipelineConfig, folder: str, device: torch.device, n: int, args: argparse.Namespace) -> Rate:
    """The plain loop on one batch of real views, held on the device."""
    loader = DataLoader(stream_of(cfg, folder, view_transform(cfg)), batch_size=cfg.train.batch_size)
    views = [v.to(device) for v in next(views_only(iter(loader)))]
    return plain_loop(cfg, lambda: views, device, n, args)


def run_plain_loader(cfg: PipelineConfig, folder: str, device: torch.device, n: int, args: argparse.Namespace) -> Rate:
    """The plain loop fed as each stage worker is fed (``tasks/train_worker.py``), in one process."""
    transform = view_transform(cfg)
    on_device = None
    if cfg.augment.on_device:  # the loader processes only decode; the views are made batched on the device
        on_device = device_views(transform)
        transform = MultiView(decode_for_device(on_device.max_size), 1)
    loader = train_loader(
        stream_of(cfg, folder, transform),
        cfg.train,
        cfg.train.batch_size,
        pin_memory=device.type == "cuda" and cfg.train.pin_memory,
    )
    batches: Iterator[list[torch.Tensor]] = views_only(iter(loader))
    if on_device is not None:
        batches = AugmentedBatches(batches, on_device, device, seed=cfg.train.seed, rank=0)
    threads = torch.get_num_threads()
    # As a stage worker with every core sets its threads (tasks/train_worker.py).
    torch.set_num_threads(training_threads(threads, cfg.train.loader_workers, accelerator=device.type == "cuda"))
    try:
        return plain_loop(cfg, batches.__next__, device, n, args)
    finally:
        torch.set_num_threads(threads)


def _ddp_rank(
    rank: int, layout: tuple[int, int], port: int, cfg: PipelineConfig, views: list[torch.Tensor], n: int, args: Any
) -> float:
    world, threads = layout
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        per_rank = cfg.train.batch_size // world
        mine = [v[rank * per_rank : (rank + 1) * per_rank].contiguous() for v in views]
        return plain_loop(cfg, lambda: mine, torch.device("cpu"), n, args).images_per_s  # all ranks' images
    finally:
        dist.destroy_process_group()


def run_ddp(cfg: PipelineConfig, folder: str, layout: tuple[int, int], n: int, args: argparse.Namespace) -> Rate:
    """The plain loop in ``W`` processes of ``C`` threads under DDP (gloo), each on its slice of the
    in-memory batch: the stage's compute and gradient all-reduce, without Ray and without loading."""
    loader = DataLoader(stream_of(cfg, folder, view_transform(cfg)), batch_size=cfg.train.batch_size)
    views = next(views_only(iter(loader)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(layout[0], mp_context=spawn) as pool:
        ranks = [pool.submit(_ddp_rank, r, layout, port, cfg, views, n, args) for r in range(layout[0])]
        return Rate(min(f.result() for f in ranks))


# --------------------------------------------------------------------------- (b) the pretrain stage


def stage_startup(started_at: float, connected_at: float, worker: dict[str, float]) -> dict[str, float]:
    """The stage's fixed cost before its first step, as ``tasks.pretrain._startup`` computes it."""
    entered = worker.get("loop_entered_at", connected_at)
    first = worker.get("first_batch_at", entered)
    return {
        "ray_connect_s": connected_at - started_at,
        "worker_group_s": max(entered - connected_at, 0.0),
        "first_batch_s": max(first - entered, 0.0),
        "total_s": max(first - started_at, 0.0),
    }


def run_stage(cfg: PipelineConfig, folder: str, storage: Path) -> Rate:
    """One pretrain stage from scratch (a new local Ray, a new run); the rate of its epochs after the first."""
    import ray

    from tasks import ray_train
    from tasks.train_worker import WorkerJob

    started_at = time.time()
    ray_train.connect(None)
    connected_at = time.time()
    try:
        outcome = ray_train.fit(WorkerJob.planned(cfg, folder, str(storage), "bench"))
        returned_at = time.time()
    finally:
        ray.shutdown()
    history = outcome.state.history
    if len(history) < 2:
        raise RuntimeError(f"expected at least 2 epochs, got {len(history)}")
    images = [cfg.train.batch_size * (h["step"] - p["step"]) for p, h in itertools.pairwise(history)]
    busy = [n / h["images_per_s"] for n, h in zip(images, history[1:], strict=True)]  # the stage's own clock
    startup = stage_startup(started_at, connected_at, outcome.state.startup)
    # Every epoch ends with a checkpoint folder written through Ray: their file times bound the epochs.
    marks = sorted(p.stat().st_mtime for p in (storage / "bench").glob("step-*/meta.json"))
    wall = math.nan
    if len(marks) == len(history):
        wall = sum(images) / (marks[-1] - marks[0])
        startup["first_epoch_s"] = marks[0] - outcome.state.startup.get("first_batch_at", marks[0])
        startup["between_epochs_s"] = (marks[-1] - marks[0] - sum(busy)) / len(busy)
        startup["teardown_s"] = returned_at - marks[-1]
    return Rate(sum(images) / sum(busy), wall_images_per_s=wall, startup=startup)


# --------------------------------------------------------------------------- main


def parse_layout(text: str) -> tuple[int, int, int | None, int | None]:
    """``WORKERSxCPUS[:LOADERS[:NICE]]``: ``ray.num_workers`` x ``ray.cpus_per_worker``, and for this
    layout only ``train.loader_workers`` and ``train.loader_nice``."""
    try:
        shape, *rest = text.lower().split(":")
        workers, cpus = (int(x) for x in shape.split("x"))
        if len(rest) > 2:
            raise ValueError(text)
        loaders, nice = ([int(x) for x in rest] + [None, None])[:2]
        return workers, cpus, loaders, nice
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"layout '{text}' is not WORKERSxCPUS[:LOADERS[:NICE]], e.g. 2x1, 1x2:0 or 1x2:1:10"
        ) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--quick", action="store_true", help="Small backbones (resnet10t, test_vit), batch 32.")
    parser.add_argument("--batch-size", type=int, help="Global batch; default 256 (32 with --quick).")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps of the plain loops.")
    parser.add_argument("--steps", type=int, default=4, help="Timed steps of every run.")
    parser.add_argument(
        "--epoch-steps", type=int, help="Steps per stage epoch (the first is untimed); default --warmup."
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--layouts",
        nargs="+",
        type=parse_layout,
        help="Stage layouts WORKERSxCPUS[:LOADERS[:NICE]] (ray.num_workers x ray.cpus_per_worker, and "
        "train.loader_workers and train.loader_nice for this layout only); default: the config's on CPU "
        "(2x1), 1x<all cores> on CUDA.",
    )
    parser.add_argument("--loader-workers", type=int, help="train.loader_workers; default: the config's.")
    parser.add_argument("--loader", action="store_true", help="Add the plain+loader variant (no Ray, no DDP).")
    parser.add_argument(
        "--ddp", action="store_true", help="Add DDP variants: the layouts' processes on in-memory data, no Ray (CPU)."
    )
    parser.add_argument("--compile", action="store_true", help="train.compile=true in every variant.")
    parser.add_argument(
        "--source",
        choices=["fashion_mnist", "synthetic"],
        default="fashion_mnist" if Path(FashionMnistSource().path).is_dir() else "synthetic",
        help="Images to ingest; default Fashion-MNIST where it is installed.",
    )
    parser.add_argument("--images", type=int, help="Train images to ingest; default: one stage epoch.")
    parser.add_argument("--epoch-images", type=int, default=60000, help="Epoch length the summary extrapolates to.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Config override, repeatable.")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device cuda, but torch {torch.__version__} (CUDA {torch.version.cuda or 'not built'}) sees no "
            f"CUDA device: run on a GPU machine, or use --device cpu"
        )
    if args.ddp and args.device == "cuda":
        parser.error("--ddp runs gloo on the CPU; leave it out with --device cuda")
    args.batch_size = args.batch_size or (32 if args.quick else 256)
    args.epoch_steps = args.epoch_steps or args.warmup
    if min(args.warmup, args.steps, args.epoch_steps, args.repeats) < 1:
        parser.error("--warmup, --steps, --epoch-steps and --repeats must be at least 1")
    if args.steps % args.epoch_steps:
        args.steps = math.ceil(args.steps / args.epoch_steps) * args.epoch_steps
        print(f"--steps rounded up to {args.steps}, whole epochs of {args.epoch_steps} steps")
    if args.loader_workers is not None:
        args.set.append(f"train.loader_workers={args.loader_workers}")
    if args.layouts is None:
        ray_cfg = load_config(None, []).ray
        cuda = args.device == "cuda"
        args.layouts = (
            [(1, available_cpus(), None, None)]
            if cuda
            else [(ray_cfg.num_workers, ray_cfg.cpus_per_worker, None, None)]
        )
    return args


def variants_for(
    name: str, model: list[str], args: argparse.Namespace, folder: str, train_samples: int, root: Path
) -> list[Variant]:
    device = torch.device(args.device)
    cfg = bench_config(model, args)
    out = [Variant(name, "plain", lambda r: run_plain(cfg, folder, device, train_samples, args))]
    if args.loader:
        out.append(
            Variant(
                name,
                f"plain+loader K={cfg.train.loader_workers}",
                lambda r: run_plain_loader(cfg, folder, device, train_samples, args),
            )
        )
    for workers, cpus, loaders, nice in args.layouts:
        if args.ddp and workers > 1:
            out.append(
                Variant(
                    name,
                    f"ddp {workers}x{cpus} no Ray",
                    lambda r, layout=(workers, cpus): run_ddp(cfg, folder, layout, train_samples, args),
                )
            )
        stage = bench_config(
            model,
            args,
            f"ray.num_workers={workers}",
            f"ray.cpus_per_worker={cpus}",
            f"ray.use_gpu={str(device.type == 'cuda').lower()}",
            f"train.epochs={1 + args.steps // args.epoch_steps}",
            f"train.max_steps_per_epoch={args.epoch_steps}",
            "ray.checkpoints_to_keep=1000",  # keep every epoch's checkpoint folder: their file times are the clock
            *([f"train.loader_workers={loaders}"] if loaders is not None else []),
            *([f"train.loader_nice={nice}"] if nice is not None else []),
        )
        layout = f"{workers}x{cpus}-k{stage.train.loader_workers}-n{stage.train.loader_nice}"
        out.append(
            Variant(
                name,
                f"sslpipe {workers}x{cpus} K={stage.train.loader_workers}"
                + (f" nice={stage.train.loader_nice}" if stage.train.loader_nice else ""),
                lambda r, stage=stage, layout=layout: run_stage(stage, folder, root / "ray" / f"{name}-{layout}-{r}"),
            )
        )
    return out


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    cores = available_cpus()
    torch.set_num_threads(cores)  # the plain loop gets the whole machine, as the stage's workers do together
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    models = QUICK_MODELS if args.quick else MODELS
    print(
        f"machine: {cores} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {device_name(device)}"
    )
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} (a shared machine slows every variant alike)")

    with tempfile.TemporaryDirectory(prefix="sslpipe-train-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        images = args.images or args.batch_size * args.epoch_steps + 64
        folder, train_samples = make_shards(root, images, args.source)
        print(f"ingested {train_samples} {args.source} train images in {time.perf_counter() - t0:.1f} s")
        if train_samples < args.batch_size * args.epoch_steps:
            raise SystemExit(f"{train_samples} train images are fewer than an epoch of {args.epoch_steps} steps")
        flops = {name: flops_per_image(bench_config(models[name], args), device) for name in args.models}
        variants = [
            v for name in args.models for v in variants_for(name, models[name], args, folder, train_samples, root)
        ]
        print(
            f"SimCLR, batch {args.batch_size}, {args.image_size} px: {args.warmup} warm-up + {args.steps} timed steps "
            f"(stage: epochs of {args.epoch_steps} steps, the first untimed), {args.repeats} repeats"
        )
        results: dict[str, dict[str, list[Rate]]] = {name: {} for name in args.models}
        for r in range(args.repeats):
            for v in variants:  # alternate, so that drift on a shared machine hits every variant alike
                rate = v.run(r)
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # hand the plain loops' cached memory back before the stage's worker runs
                results[v.model].setdefault(v.name, []).append(rate)
                print(f"  repeat {r + 1}  {v.model:<7} {v.name:<20} {rate.images_per_s:9.1f} img/s", flush=True)

    labels = {
        name: next(s.split("=", 1)[1] for s in models[name] if s.startswith("model.backbone=")) for name in models
    }
    report(args, results, flops, labels, device)


# --------------------------------------------------------------------------- report


def median(rates: list[Rate], key: str) -> float:
    """The median of a ``Rate`` field, or of a ``startup`` entry (NaN where a run lacks it)."""
    return statistics.median(getattr(x, key) if hasattr(x, key) else x.startup.get(key, math.nan) for x in rates)


def cell(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def report(
    args: argparse.Namespace,
    results: dict[str, dict[str, list[Rate]]],
    flops: dict[str, float],
    labels: dict[str, str],
    device: torch.device,
) -> None:
    peak = peak_tflops(device)
    print(f"\nmedians of {args.repeats} runs; TFLOP/s = counted forward+backward FLOPs per image x img/s")
    print(
        f"  {'variant':<20} {'img/s':>9} {'wall img/s':>11} {'TFLOP/s':>8} {'vs plain':>9}"
        + (f" {'of peak':>8}" if peak else "")
        + "   img/s of each run"
    )
    for name, variants in results.items():
        print(f"{labels[name]}, {flops[name] / 1e9:.2f} GFLOP per image")
        base = median(variants["plain"], "images_per_s")
        for variant, rates in variants.items():
            rate = median(rates, "images_per_s")
            tflops = rate * flops[name] / 1e12
            wall = cell(median(rates, "wall_images_per_s"), ".1f")
            line = f"  {variant:<20} {rate:>9.1f} {wall:>11} {tflops:>8.3f} {rate / base:>8.2f}x"
            if peak:
                line += f" {100 * tflops / peak:>7.1f}%"
            print(line + "   " + ", ".join(f"{x.images_per_s:.1f}" for x in rates))
    if device.type == "cuda":
        print(f"peak: {peak:.0f} TFLOP/s dense bf16 ({device_name(device)})" if peak else "peak unknown")

    print(
        "\nratio to plain (sslpipe: target >= 0.90): of the medians, and within each repeat; 'wall' adds the work\n"
        f"between epochs (here every {args.epoch_steps} steps), 'real epochs' it every {args.epoch_images} images"
    )
    for name, variants in results.items():
        base = median(variants["plain"], "images_per_s")
        for variant, rates in variants.items():
            if variant == "plain":
                continue
            rate = median(rates, "images_per_s")
            paired = [x.images_per_s / p.images_per_s for x, p in zip(rates, variants["plain"], strict=True)]
            line = f"  {labels[name]:<22} {variant:<20} {rate / base:.2f}   per repeat " + ", ".join(
                f"{x:.2f}" for x in paired
            )
            if variant.startswith("sslpipe"):
                wall = median(rates, "wall_images_per_s") / base
                full = args.epoch_images / (args.epoch_images / rate + median(rates, "between_epochs_s")) / base
                line += f"   wall {cell(wall, '.2f')}   real epochs {cell(full, '.2f')}"
            elif variant.startswith("plain+loader"):
                line += f"   {100 * median(rates, 'data_wait'):.1f}% of its time waiting for batches"
            print(line)

    print("\nstage fixed costs, seconds (medians); start-up = ray connect + worker group + first batch = total")
    widths = [max(len(h), 6) for h in STARTUP_COLUMNS.values()]
    print(f"  {'':<22} {'':<20} " + " ".join(h.rjust(w) for h, w in zip(STARTUP_COLUMNS.values(), widths, strict=True)))
    for name, variants in results.items():
        for variant, rates in variants.items():
            if variant.startswith("sslpipe"):
                cells = [cell(median(rates, k), ".2f").rjust(w) for k, w in zip(STARTUP_COLUMNS, widths, strict=True)]
                print(f"  {labels[name]:<22} {variant:<20} " + " ".join(cells))
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
