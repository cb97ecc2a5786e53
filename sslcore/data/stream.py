"""Streaming shards back: a per-rank, per-loader-worker disjoint sample stream for training, and a
deterministic full read of a split for evaluation.

Shards are opened through fsspec, so local paths and ``s3://`` URLs (s3fs) read the same way.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset import tariterators

from sslcore.config import StorageConfig
from sslcore.data.images import decode_rgb
from sslcore.data.manifest import Manifest
from sslcore.storage import storage_options

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def shard_urls(manifest: Manifest, folder: str | Path, split: str) -> list[str]:
    base = str(folder).rstrip("/")
    return [f"{base}/{s.name}" for s in manifest.split(split).shards]


def _image_bytes(sample: dict[str, Any]) -> bytes:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return bytes(sample[ext])
    raise KeyError(f"sample {sample.get('__key__')} has no image member ({', '.join(IMAGE_EXTS)})")


def iter_tar_samples(urls: list[str], storage: StorageConfig | None = None) -> Iterator[dict[str, Any]]:
    """Yield webdataset samples (dicts of raw member bytes) from the given shards, in order."""
    for url in urls:
        with fsspec.open(url, "rb", **storage_options(url, storage)) as stream:
            files = tariterators.tar_file_expander([{"url": url, "stream": stream}])
            yield from tariterators.group_by_keys(files)


def assign(items: int, slot: int, slots: int) -> list[int]:
    """Indices ``slot, slot + slots, ...`` below ``items``: a disjoint, complete partition."""
    return list(range(slot, items, slots))


class TrainStream(IterableDataset[list[torch.Tensor]]):
    """Endless stream of augmented multi-view samples for one DDP rank.

    Shards are reshuffled each pass with ``seed + pass``; rank ``r`` of ``W`` and loader worker
    ``w`` of ``K`` read shards ``r*K + w`` modulo ``W*K`` of the shuffled list. When there are
    fewer shards than ``W*K`` readers, every reader scans all shards and keeps every ``W*K``-th
    sample instead, so the parts stay disjoint and complete. The stream never ends, so every
    rank can take exactly the same number of steps regardless of how samples fall into shards.
    """

    def __init__(
        self,
        urls: list[str],
        transform: Callable[[Any], list[torch.Tensor]],
        *,
        rank: int,
        world_size: int,
        seed: int,
        shuffle_buffer: int = 512,
        storage: StorageConfig | None = None,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("no shards to stream")
        self.urls = list(urls)
        self.transform = transform
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.storage = storage

    def reader_slot(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def _pass(self, epoch: int) -> Iterator[dict[str, Any]]:
        slot, slots = self.reader_slot()
        order = list(self.urls)
        random.Random(self.seed + epoch).shuffle(order)  # same order on every reader
        if len(order) >= slots:
            yield from iter_tar_samples([order[i] for i in assign(len(order), slot, slots)], self.storage)
        else:
            for i, sample in enumerate(iter_tar_samples(order, self.storage)):
                if i % slots == slot:
                    yield sample

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        slot, _ = self.reader_slot()
        rng = random.Random(self.seed * 1_000_003 + slot)
        buffer: list[dict[str, Any]] = []  # one shuffle buffer across passes: the stream is continuous
        epoch = 0
        while True:
            seen = 0
            for sample in self._pass(epoch):
                seen += 1
                buffer.append(sample)
                if len(buffer) >= self.shuffle_buffer:
                    i = rng.randrange(len(buffer))
                    buffer[i], buffer[-1] = buffer[-1], buffer[i]
                    yield self.transform(decode_rgb(_image_bytes(buffer.pop())))
            if seen == 0:
                raise RuntimeError(f"reader {slot} got no samples from {len(self.urls)} shards")
            epoch += 1


def load_split_arrays(
    manifest: Manifest, folder: str | Path, split: str, storage: StorageConfig | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """All images of a split as uint8 (H, W, 3) arrays, in shard order, with their labels (-1 if none)."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    for sample in iter_tar_samples(shard_urls(manifest, folder, split), storage):
        images.append(np.asarray(decode_rgb(_image_bytes(sample)), dtype=np.uint8))
        labels.append(int(sample["cls"]) if "cls" in sample else -1)
    return images, np.asarray(labels, dtype=np.int64)
