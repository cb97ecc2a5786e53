"""Feeding pretraining: webdataset + DataLoader (``TrainStream``) vs Ray Data, side by side.

Every variant delivers what the training loop receives: batches of two augmented SimCLR views,
collated float tensors ``[(B, 3, S, S), (B, 3, S, S)]``, decoded from the same shards with the
same ``view_transform``, shuffled the same way (shard/file order reshuffled every pass plus a
512-sample buffer). Each run takes ``--images // --batch-size`` batches; nothing trains, so the
numbers are what the data path alone can deliver. Columns:

* ``img/s``: all the run's images over the time from building the pipeline to the last batch;
* ``steady``: the last quarter of the batches only, once start-up and whatever the pipeline
  prefetched meanwhile are used up (needs a run long enough for that: use ``--images`` >= 20000);
* ``first s``: time to the first batch, counted from building the pipeline;
* ``start s``: what a Ray variant pays before that: ``ray.init``, and for the ``train+`` rows also
  the trainer's start-up until the loop function runs in the workers;
* ``procs`` / ``PSS MB``: peak process count and summed proportional set size of this process
  and everything it started (loader workers; or the whole local Ray cluster), sampled every 0.5 s.

Variants, alternated within each repeat so that drift on a shared machine hits all alike:

* ``trainstream K=k``: ``TrainStream`` + ``DataLoader(num_workers=k)`` in one process, exactly
  as each Ray Train worker runs it (``tasks/train_worker.py``), without Ray running;
* ``ray-data``: ``read_webdataset`` -> ``map_batches`` (decode + views, fused with the read) ->
  ``iter_torch_batches`` in the driver, re-executed for every pass;
* ``train+raydata W=w``: the same dataset handed to ``TorchTrainer(datasets={"train": ds})`` and
  read with ``get_dataset_shard("train")`` inside ``w`` workers, timed inside each (their rates add
  up); the workers reserve half the CPUs, since Ray Data's tasks only run on unreserved ones;
* ``train+stream W=w``: the same trainer without ``datasets``, each worker reading its own
  ``TrainStream`` through ``DataLoader(num_workers=--train-loader-workers)``: our set-up, for
  start-up, memory and process counts alike to ``train+raydata``.

Ray is started for each Ray run (``ray.init(num_cpus=--cpus)``) and shut down after it.

    python benchmarks/data_loading.py --images 20000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sslcore.config import load_config
from sslcore.data.images import decode_rgb
from sslcore.data.ingest import ingest
from sslcore.data.manifest import read_manifest
from sslcore.data.stream import IMAGE_EXTS, TrainStream, shard_urls
from sslcore.methods import as_method, build_method
from sslcore.resources import available_cpus

ViewTransform = Callable[[Image.Image], list[torch.Tensor]]
SHUFFLE_BUFFER = 512  # TrainStream's default; Ray Data gets the same local shuffle buffer


@dataclass(frozen=True)
class Run:
    images_per_s: float
    steady_images_per_s: float
    first_batch_s: float
    startup_s: float
    processes: int
    pss_mb: float


@dataclass(frozen=True)
class Timing:
    images_per_s: float  # all n batches, from building the pipeline to the last batch
    steady_images_per_s: float  # the last quarter of the batches only
    first_batch_s: float


# --------------------------------------------------------------------------- shared pieces


def make_shards(root: str, source: str, images: int) -> list[str]:
    """Ingest Fashion-MNIST (its first ``images`` training images) or digits; the train shard URLs."""
    overrides = ["ingest.source.kind=digits"]
    if source == "fashion_mnist":
        overrides = ["ingest.source.kind=fashion_mnist", f"ingest.source.limit={images}"]
    cfg = load_config(None, overrides)
    result = ingest(cfg.ingest, root)
    return shard_urls(result.manifest, result.folder, "train")


def simclr_views(image_size: int) -> ViewTransform:
    """SimCLR's two-view transform with the default augmentations, as the training loop builds it."""
    cfg = load_config(None, ["method.name=simclr", f"model.image_size={image_size}"])
    return as_method(build_method(cfg)).view_transform(cfg.augment, cfg.model.image_size)


def view_tensors(batch: Any) -> list[torch.Tensor]:
    """The (B, 3, S, S) view tensors in a collated batch, however the stream wraps them."""
    if isinstance(batch, torch.Tensor):
        return [batch] if batch.dim() == 4 else []
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, list | tuple):
        return [t for item in batch for t in view_tensors(item)]
    return []


def time_batches(batches: Iterable[Any], n: int, batch_size: int, start: float) -> Timing:
    """Pull ``n`` batches, checking each holds two float views of ``batch_size`` images."""
    if n < 4:
        raise ValueError(f"need at least 4 batches per run, got {n}: raise --images or lower --batch-size")
    first = last = tail = start
    taken = 0
    for batch in batches:
        views = view_tensors(batch)
        if len(views) != 2 or any(v.shape[0] != batch_size or v.dtype != torch.float32 for v in views):
            raise RuntimeError(f"expected 2 float32 views of {batch_size} images, got {[v.shape for v in views]}")
        taken += 1
        last = time.perf_counter()
        if taken == 1:
            first = last
        if taken == n - n // 4:
            tail = last
        if taken == n:
            break
    if taken < n:
        raise RuntimeError(f"the pipeline ended after {taken} of {n} batches")
    return Timing(n * batch_size / (last - start), (n // 4) * batch_size / (last - tail), first - start)


def _process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from ``/proc`` (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


class MemorySampler:
    """Peak process count and summed PSS of this process and its descendants, sampled in a thread."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.processes = 0
        self.pss_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        if not os.path.exists("/proc/self/smaps_rollup"):
            return
        sizes = [_pss_bytes(pid) for pid in _process_tree(os.getpid())]
        self.processes = max(self.processes, sum(1 for size in sizes if size > 0))
        self.pss_bytes = max(self.pss_bytes, sum(sizes))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the pipeline is still alive here: callers stop it after leaving the block


# --------------------------------------------------------------------------- (a) TrainStream + DataLoader


def run_trainstream(urls: list[str], views: ViewTransform, args: argparse.Namespace, workers: int, seed: int) -> Run:
    with MemorySampler() as memory:
        start = time.perf_counter()
        stream = TrainStream(urls, views, rank=0, world_size=1, seed=seed)
        loader = DataLoader(
            stream,
            batch_size=args.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )
        batches = iter(loader)
        timing = time_batches(batches, args.images // args.batch_size, args.batch_size, start)
    del batches  # stops the loader workers
    return Run(**asdict(timing), startup_s=0.0, processes=memory.processes, pss_mb=memory.pss_bytes / 2**20)


# --------------------------------------------------------------------------- (b) Ray Data


class AugmentViews:
    """Ray Data ``map_batches`` function: encoded image bytes -> two augmented views per row."""

    def __init__(self, views: ViewTransform) -> None:
        self.views = views

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        column = next(batch[ext] for ext in IMAGE_EXTS if ext in batch)
        per_row = [self.views(decode_rgb(bytes(data))) for data in column]
        return {f"view{i}": torch.stack([row[i] for row in per_row]).numpy() for i in range(len(per_row[0]))}


def ray_dataset(urls: list[str], views: ViewTransform, seed: int) -> Any:
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # no per-execution INFO lines between our rows
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ds = ray.data.read_webdataset(
        urls,
        decoder=None,  # raw bytes: decode_rgb below, as TrainStream does
        suffixes=list(IMAGE_EXTS),  # skip the .cls/.json members
        shuffle=ray.data.FileShuffleConfig(seed=seed),  # reseeded on every execution (pass)
    )
    # Default batch_size: a whole block, so the read and the map fuse into one task per file group.
    return ds.map_batches(AugmentViews(views), batch_format="numpy")


def ray_batches(ds: Any, batch_size: int, seed: int) -> Iterator[list[torch.Tensor]]:
    """Endless, like TrainStream: the dataset is executed again when a pass ends."""
    while True:
        for batch in ds.iter_torch_batches(
            batch_size=batch_size,
            drop_last=True,
            local_shuffle_buffer_size=SHUFFLE_BUFFER,
            local_shuffle_seed=seed,
        ):
            yield [batch["view0"], batch["view1"]]


def start_ray(cpus: int) -> float:
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    return time.perf_counter() - start


def run_ray_data(urls: list[str], views: ViewTransform, args: argparse.Namespace, seed: int) -> Run:
    import ray

    with MemorySampler() as memory:
        startup = start_ray(args.cpus)
        start = time.perf_counter()
        ds = ray_dataset(urls, views, seed)
        timing = time_batches(
            ray_batches(ds, args.batch_size, seed), args.images // args.batch_size, args.batch_size, start
        )
    ray.shutdown()
    return Run(**asdict(timing), startup_s=startup, processes=memory.processes, pss_mb=memory.pss_bytes / 2**20)


def ray_train_loop(config: dict[str, Any]) -> None:
    """Runs in each Ray Train worker: read this rank's data as the training loop would, either its
    Ray Data shard or (``config["loader_workers"]`` set) its own TrainStream + DataLoader."""
    import ray.train

    loop_start = time.time()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    batch_size, seed = config["batch_size"], config["seed"]

    def shard_batches() -> Iterator[list[torch.Tensor]]:
        shard = ray.train.get_dataset_shard("train")
        while True:
            for batch in shard.iter_torch_batches(
                batch_size=batch_size,
                drop_last=True,
                local_shuffle_buffer_size=SHUFFLE_BUFFER,
                local_shuffle_seed=seed + rank,
            ):
                yield [batch["view0"], batch["view1"]]

    start = time.perf_counter()
    workers = config["loader_workers"]
    if workers is None:
        timing = time_batches(shard_batches(), config["batches"], batch_size, start)
    else:
        stream = TrainStream(config["urls"], config["views"], rank=rank, world_size=world, seed=seed)
        loader = DataLoader(
            stream,
            batch_size=batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )
        timing = time_batches(iter(loader), config["batches"], batch_size, start)
    # Train v2 keeps reported metrics only with a checkpoint: hand the numbers back through a file.
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps({**asdict(timing), "loop_start": loop_start}))


def run_ray_train(
    urls: list[str], views: ViewTransform, args: argparse.Namespace, workers: int, loader: int | None, seed: int
) -> Run:
    """``TorchTrainer`` with ``workers`` workers fed by Ray Data (``loader`` None) or by TrainStream +
    ``DataLoader(num_workers=loader)`` in each worker, as ``tasks/train_worker.py`` does."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    per_worker = args.batch_size // workers
    share = args.cpus / workers / (2 if loader is None else 1)  # Ray Data only gets CPUs no worker reserved
    cpus = args.train_cpus if args.train_cpus is not None else share
    with MemorySampler() as memory, tempfile.TemporaryDirectory() as out:
        startup = start_ray(args.cpus)
        fit_start = time.time()
        trainer = TorchTrainer(
            ray_train_loop,
            train_loop_config={
                "batch_size": per_worker,
                "batches": args.images // args.batch_size,
                "seed": seed,
                "out": out,
                "loader_workers": loader,
                "urls": urls,
                "views": views,
            },
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus}),
            run_config=RunConfig(name="data-loading", storage_path=os.path.join(out, "ray")),
            datasets={"train": ray_dataset(urls, views, seed)} if loader is None else None,
        )
        trainer.fit()
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(workers)]
    ray.shutdown()
    return Run(
        images_per_s=sum(r["images_per_s"] for r in ranks),  # the ranks read concurrently
        steady_images_per_s=sum(r["steady_images_per_s"] for r in ranks),
        first_batch_s=max(r["first_batch_s"] for r in ranks),
        startup_s=startup + max(r["loop_start"] for r in ranks) - fit_start,
        processes=memory.processes,
        pss_mb=memory.pss_bytes / 2**20,
    )


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000, help="Images delivered per run (and ingested).")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader K values.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards-dir", help="Folder with manifest.json and shards; default: ingest into a temp dir.")
    parser.add_argument("--digits", action="store_true", help="Ingest scikit-learn digits instead of Fashion-MNIST.")
    parser.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=...).")
    parser.add_argument("--train-workers", type=int, nargs="*", default=[2], help="Ray Train worker counts.")
    parser.add_argument(
        "--train-loader-workers", type=int, default=1, help="DataLoader K in each Ray Train worker of train+stream."
    )
    parser.add_argument(
        "--train-cpus",
        type=float,
        help="CPUs reserved per Ray Train worker; default --cpus split across the workers, and for train+raydata "
        "only half of that, so that Ray Data keeps the other half (with none left, its tasks never get scheduled "
        "and the run hangs).",
    )
    parser.add_argument("--no-ray", action="store_true", help="Only the TrainStream variants.")
    args = parser.parse_args()

    torch.set_num_threads(1)  # what each loader process does: parallelism comes from processes
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.shards_dir:
            urls = shard_urls(read_manifest(args.shards_dir), args.shards_dir, "train")
        else:
            urls = make_shards(tmp, "digits" if args.digits else "fashion_mnist", args.images)
            print(f"ingested {'digits' if args.digits else 'Fashion-MNIST'} into {len(urls)} train shards", end="")
            print(f" in {time.perf_counter() - t0:.1f} s")
        views = simclr_views(args.image_size)
        batches = args.images // args.batch_size
        print(
            f"{batches} batches of {args.batch_size} x 2 views of {args.image_size}px per run, {args.repeats} repeats"
        )

        # Each variant is a function of the repeat's seed.
        variants: dict[str, Callable[[int], Run]] = {
            f"trainstream K={k}": partial(run_trainstream, urls, views, args, k) for k in args.loader_workers
        }
        if not args.no_ray:
            variants["ray-data"] = partial(run_ray_data, urls, views, args)
            for w in args.train_workers:
                variants[f"train+raydata W={w}"] = partial(run_ray_train, urls, views, args, w, None)
                variants[f"train+stream W={w}"] = partial(
                    run_ray_train, urls, views, args, w, args.train_loader_workers
                )
        runs: dict[str, list[Run]] = {name: [] for name in variants}
        for r in range(args.repeats):
            for name, run in variants.items():  # alternate, so drift on a shared machine hits every variant alike
                runs[name].append(run(r))
                print(f"  repeat {r + 1} {name:<18} {runs[name][-1].images_per_s:8.0f} img/s", flush=True)

    def med(name: str, field: str) -> float:
        return statistics.median(getattr(x, field) for x in runs[name])

    base = max((n for n in runs if n.startswith("trainstream")), key=lambda n: med(n, "images_per_s"))
    header = ("variant", "img/s", "steady", "first s", "start s", "procs", "PSS MB", "vs best")
    print(f"\n{header[0]:<18}" + "".join(f"{h:>9}" for h in header[1:]) + "   img/s of each run")
    for name in runs:
        cells = (
            f"{med(name, 'images_per_s'):.0f}",
            f"{med(name, 'steady_images_per_s'):.0f}",
            f"{med(name, 'first_batch_s'):.2f}",
            f"{med(name, 'startup_s'):.2f}",
            f"{med(name, 'processes'):.0f}",
            f"{med(name, 'pss_mb'):.0f}",
            f"{med(name, 'images_per_s') / med(base, 'images_per_s'):.2f}x",
        )
        rates = ", ".join(f"{x.images_per_s:.0f}" for x in runs[name])
        print(f"{name:<18}" + "".join(f"{c:>9}" for c in cells) + f"   {rates}")
    print(f"\nmedians of {args.repeats} runs; {available_cpus()} CPUs available; 'vs best' compares img/s with {base}")
    pairs = [(name, base) for name in runs if not name.startswith("trainstream")]
    pairs += [(name, name.replace("raydata", "stream")) for name in runs if name.startswith("train+raydata")]
    for name, other in pairs:
        ratio = med(name, "images_per_s") / med(other, "images_per_s")
        steady = med(name, "steady_images_per_s") / med(other, "steady_images_per_s")
        print(f"{name} / {other} = {ratio:.2f}x (steady: {steady:.2f}x)")


if __name__ == "__main__":
    main()
