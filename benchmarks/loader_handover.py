"""What receiving a batch from the DataLoader's processes costs the training process.

Loader processes hand each batch over through shared memory, one hand-over per tensor, and the
training process pays for receiving it between its steps: on a GPU, time taken from the thread that
launches the kernels. This script fills the loader's queues with ready batches (TrainStream-shaped
items of ``--image-size`` uint8 images, nothing decoded), then times ``--batches`` ``next()`` calls,
for the default collation (the views, and the per-sample skip counts as a tensor of their own) and
for ``sslcore.data.stream.collate_views`` (the counts summed to an int), alternating, ``--repeats`` times.

    python benchmarks/loader_handover.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from sslcore.data.stream import collate_views


class ReadyItems(IterableDataset[tuple[list[torch.Tensor], int]]):
    def __init__(self, size: int) -> None:
        self.size = size

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], int]]:
        image = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        while True:
            yield [image], 0


def receive_ms(collate: Callable[[list[Any]], Any] | None, args: argparse.Namespace) -> float:
    loader = DataLoader(
        ReadyItems(args.image_size),
        batch_size=args.batch_size,
        num_workers=args.workers,
        prefetch_factor=args.batches,  # every timed batch is ready before the clock starts
        persistent_workers=True,
        collate_fn=collate,
    )
    batches = iter(loader)
    next(batches)
    time.sleep(args.fill_s)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    took = (time.perf_counter() - start) / args.batches * 1e3
    del batches, loader
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=14)
    parser.add_argument("--fill-s", type=float, default=4.0, help="Wait for the queues to fill.")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    variants: dict[str, Callable[[list[Any]], Any] | None] = {
        "default collation (views + count tensor)": None,
        "collate_views (views + int)": collate_views,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, collate in variants.items():
            times[name].append(receive_ms(collate, args))
    print(
        f"ms per ready batch received ({args.batch_size} x 3x{args.image_size}x{args.image_size} uint8, "
        f"{args.workers} loader processes), medians of {args.repeats}:"
    )
    for name, values in times.items():
        print(f"  {name:<42} {statistics.median(values):6.2f}   [{', '.join(f'{v:.2f}' for v in values)}]")


if __name__ == "__main__":
    main()
