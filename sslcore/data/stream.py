"""Streaming shards back: a per-rank, per-loader-worker disjoint sample stream for training, and a
deterministic full read of a split for evaluation.

Shards are opened through fsspec, so local paths and ``s3://`` URLs (s3fs) read the same way.
"""

from __future__ import annotations

import logging
import os
import random
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from sslcore.config import StorageConfig, TrainConfig
from sslcore.data.images import decode_rgb
from sslcore.data.manifest import Manifest
from sslcore.data.tarfmt import iter_samples
from sslcore.distributed import sum_over_ranks
from sslcore.storage import StorageError, storage_errors, storage_options

log = logging.getLogger(__name__)

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
            yield from iter_samples(stream, url)


#: Waits before a training reader opens a shard again after a storage failure (an S3 outage that
#: outlasted botocore's own retries, ``storage.max_attempts``); after the last, the run fails and
#: Ray Train restarts it from its newest checkpoint.
REOPEN_WAITS_S = (5.0, 10.0, 20.0, 40.0)


def read_shard(
    url: str, storage: StorageConfig | None = None, waits: tuple[float, ...] | None = None
) -> Iterator[dict[str, Any]]:
    """The samples of one shard, in order, surviving storage outages: when reading ``s3://`` fails
    with a storage failure (not a damaged tar, a missing object or denied access), the shard is
    opened again after the next of ``waits`` and the samples already yielded are skipped, so the
    reader sees every sample once, in the same order. Raises :class:`~sslcore.storage.StorageError`
    when the waits are used up (default :data:`REOPEN_WAITS_S`)."""
    waits = REOPEN_WAITS_S if waits is None else waits
    done = 0
    for attempt in range(len(waits) + 1):
        seen = 0
        try:
            with storage_errors(url, storage, "reading shard"):
                for sample in iter_tar_samples([url], storage):
                    seen += 1
                    if seen > done:
                        done = seen
                        yield sample
            return
        except StorageError as exc:
            if attempt == len(waits):
                raise
            wait = waits[attempt]
            log.warning("reading %s failed after %d samples (%s); opening it again in %.0f s", url, done, exc, wait)
            time.sleep(wait)


def assign(items: int, slot: int, slots: int) -> list[int]:
    """Indices ``slot, slot + slots, ...`` below ``items``: a disjoint, complete partition."""
    return list(range(slot, items, slots))


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64-style), so nearby inputs give unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for part in parts:
        x = (x ^ (part & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x >> 1


# What a broken image member raises while decoding (PIL raises SyntaxError for some bad PNGs).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, KeyError, Image.DecompressionBombError)
# What a broken or truncated tar raises while it is being read.
SHARD_ERRORS = (OSError, ValueError, EOFError, tarfile.TarError)


def batches_before(start_batch: int, role: int, workers: int) -> int:
    """How many of the first ``start_batch`` batches DataLoader worker ``role`` produced: the
    DataLoader takes batches from its workers strictly in turn (batch ``i`` from worker ``i % K``)."""
    return len(range(role, start_batch, workers))


class TrainStream(IterableDataset[tuple[list[torch.Tensor], int]]):
    """Endless stream of augmented multi-view samples for one DDP rank, resumable at any step.

    **Partition.** Shards are reshuffled each pass with ``seed + pass``; rank ``r`` of ``W`` and
    loader worker ``w`` of ``K`` read shards ``r*K + w`` modulo ``W*K`` of the shuffled list. When
    there are fewer shards than ``W*K`` readers, every reader scans all shards and keeps every
    ``W*K``-th sample instead, so the parts stay disjoint and complete. Each reader shuffles its
    part of a pass through a buffer of ``shuffle_buffer`` samples.

    **Equal steps.** The stream never ends, so every rank takes exactly the same number of steps
    however samples fall into shards; an epoch is a number of samples (``sslcore.train.plan_steps``).

    **Position.** Everything random is a function of the position: the pass order of ``(seed,
    pass)``, the buffer of ``(seed, reader, pass)``, each sample's augmentation of ``(seed, reader,
    index)``. A stream built with ``start_batch=n`` therefore yields exactly what the ``n+1``-th
    and later batches of a fresh stream would have held: a resumed run sees the same data as an
    uninterrupted one. Whole passes are skipped by arithmetic on ``sizes`` (the manifest's sample
    count per shard); within a pass the skipped samples are read but not decoded. Exact for the
    same ``W``, ``K`` and ``batch_size``, and as long as no sample before the position was corrupt.

    **Corrupt samples.** A member that fails to decode, or a shard that fails to read, is skipped
    with a warning. A storage outage is not corruption: the shard is read again where it broke off
    (:func:`read_shard`), and an outage that outlasts those retries fails the run.

    Each item is ``(views, skipped)``, where ``skipped`` counts what this reader
    dropped since its previous item; the training loop sums them and enforces a bound.
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
        sizes: list[int] | None = None,
        start_batch: int = 0,
        batch_size: int = 1,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("no shards to stream")
        if sizes is not None and len(sizes) != len(urls):
            raise ValueError(f"{len(sizes)} shard sizes for {len(urls)} shards")
        self.urls = list(urls)
        self.transform = transform
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.storage = storage
        self.sizes = sizes
        self.start_batch = start_batch
        self.batch_size = batch_size

    def _role(self) -> tuple[int, int, int]:
        """``(slot, slots, samples already consumed)`` of this reader.

        A resumed DataLoader hands its first batch to worker 0, but batch ``start_batch`` came from
        worker ``start_batch % K`` in the run being resumed: worker ``w`` takes over that run's
        worker ``(start_batch + w) % K``, and with it that worker's slot and position.
        """
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        role = (self.start_batch + worker) % workers
        consumed = batches_before(self.start_batch, role, workers) * self.batch_size
        return self.rank * workers + role, self.world_size * workers, consumed

    def reader_slot(self) -> tuple[int, int]:
        slot, slots, _ = self._role()
        return slot, slots

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.urls)))
        random.Random(self.seed + epoch).shuffle(order)  # same order on every reader
        return order

    def pass_length(self, slot: int, slots: int, epoch: int) -> int | None:
        """Samples reader ``slot`` gets in pass ``epoch``, from ``sizes``; None without them."""
        if self.sizes is None:
            return None
        order = self._order(epoch)
        if len(order) >= slots:
            return sum(self.sizes[order[i]] for i in assign(len(order), slot, slots))
        return len(range(slot, sum(self.sizes), slots))

    def _pass(self, epoch: int, slot: int | None = None, slots: int | None = None) -> Iterator[dict[str, Any]]:
        """Reader ``slot``'s samples of one pass in shard order; unreadable shards are skipped."""
        if slot is None or slots is None:
            slot, slots = self.reader_slot()
        order = [self.urls[i] for i in self._order(epoch)]
        if len(order) >= slots:
            mine, keep = [order[i] for i in assign(len(order), slot, slots)], None
        else:
            mine, keep = order, slot
        i = 0
        for url in mine:
            try:
                for sample in read_shard(url, self.storage):
                    if keep is None or i % slots == keep:
                        yield sample
                    i += 1
            except StorageError:
                raise  # the store, not the shard: fail the run (Ray restarts it from its checkpoint)
            except SHARD_ERRORS as exc:
                log.warning("skipping the rest of shard %s: %s: %s", url, type(exc).__name__, exc)
                yield {"__key__": f"{url}#unreadable", "__error__": f"{type(exc).__name__}: {exc}"}

    def _shuffled_pass(self, epoch: int, slot: int, slots: int) -> Iterator[dict[str, Any]]:
        rng = random.Random(mix_seed(self.seed, slot, epoch))
        buffer: list[dict[str, Any]] = []
        for sample in self._pass(epoch, slot, slots):
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                i = rng.randrange(len(buffer))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], int]]:
        slot, slots, skip = self._role()
        index, epoch = 0, 0
        while skip > 0:  # whole passes, without reading them
            length = self.pass_length(slot, slots, epoch)
            if length is None or length > skip or length == 0:
                break
            skip, index, epoch = skip - length, index + length, epoch + 1
        skipped = warned = 0
        while True:
            seen = 0
            for sample in self._shuffled_pass(epoch, slot, slots):
                seen += 1
                index += 1
                if skip > 0:
                    skip -= 1
                    continue
                try:
                    if "__error__" in sample:
                        raise OSError(sample["__error__"])
                    image = decode_rgb(_image_bytes(sample))
                except DECODE_ERRORS as exc:
                    skipped += 1
                    if warned < 10:
                        warned += 1
                        log.warning("skipping sample %s: %s: %s", sample.get("__key__"), type(exc).__name__, exc)
                    continue
                # The CPU generator only: torch.manual_seed also queues the seed for CUDA, MTIA and
                # XPU and formats a stack trace for each of them, ~0.8 ms per sample.
                torch.default_generator.manual_seed(mix_seed(self.seed, slot, index))
                yield self.transform(image), skipped
                skipped = 0
            if seen == 0:
                raise RuntimeError(f"reader {slot} got no samples from {len(self.urls)} shards")
            epoch += 1


#: A loader's batch over :class:`TrainStream`: the views, and the samples skipped since the last batch
#: (an int from :func:`train_loader`, a tensor of per-sample counts from a default DataLoader).
LoaderBatch = tuple[list[torch.Tensor], torch.Tensor | int]


class CorruptDataError(RuntimeError):
    """More unreadable samples than ``train.max_corrupt_samples``."""


class CountedBatches:
    """A loader's ``(views, skipped)`` batches as plain views, counting the skipped samples in
    ``state.corrupt_samples`` (any object with that attribute, e.g. ``sslcore.train.TrainState``).

    Each rank counts its own; :meth:`settle`, called by all ranks together, adds them up. Past
    ``limit`` in total (or on one rank alone, checked every batch) it raises ``CorruptDataError``.

    ``wait_s`` adds up the seconds spent waiting for the loader, the training loop's data wait
    (on-device augmentation, which runs after this, is compute and not counted).
    """

    def __init__(self, batches: Iterator[LoaderBatch], state: Any, limit: int) -> None:
        self.batches = batches
        self.state = state
        self.limit = limit
        self.unreported = 0  # this rank's count since the last report
        self.first_batch_at: float | None = None  # wall clock, for start-up cost reports
        self.wait_s = 0.0  # seconds blocked in the loader, all batches so far

    def __iter__(self) -> CountedBatches:
        return self

    def __next__(self) -> list[torch.Tensor]:
        asked = time.perf_counter()
        views, skipped = next(self.batches)
        self.wait_s += time.perf_counter() - asked
        if self.first_batch_at is None:
            self.first_batch_at = time.time()
        self.unreported += int(torch.as_tensor(skipped).sum())  # an int from train_loader, a tensor by default
        self.check(self.state.corrupt_samples + self.unreported)
        return views

    def settle(self) -> None:
        """Add every rank's new count to the state (a collective: all ranks call it together)."""
        self.state.corrupt_samples += sum_over_ranks(self.unreported)
        self.unreported = 0
        self.check(self.state.corrupt_samples)

    def check(self, total: int) -> None:
        if total > self.limit:
            raise CorruptDataError(
                f"{total} unreadable samples skipped, more than train.max_corrupt_samples={self.limit}: "
                f"the shards are damaged; re-run ingest (it validates every image) or raise the limit"
            )


def views_only(batches: Iterator[LoaderBatch]) -> Iterator[list[torch.Tensor]]:
    """Drop the skipped-sample counts of a loader over :class:`TrainStream` (single process use)."""
    for views, _ in batches:
        yield views


def load_split_arrays(
    manifest: Manifest,
    folder: str | Path,
    split: str,
    storage: StorageConfig | None = None,
    limit: int | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """All images of a split (or its first ``limit``) as uint8 (H, W, 3) arrays, in shard order,
    with their labels (-1 if none). Shards are read with :func:`read_shard`'s retries."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    for url in shard_urls(manifest, folder, split):
        if limit is not None and len(images) >= limit:
            break  # no shard past the limit is opened
        for sample in read_shard(url, storage):
            if limit is not None and len(images) >= limit:
                break
            images.append(np.asarray(decode_rgb(_image_bytes(sample)), dtype=np.uint8))
            labels.append(int(sample["cls"]) if "cls" in sample else -1)
    return images, np.asarray(labels, dtype=np.int64)


class _Nice:
    """DataLoader ``worker_init_fn``: lower the loader process's CPU priority by ``increment``."""

    def __init__(self, increment: int) -> None:
        self.increment = increment

    def __call__(self, worker_id: int) -> None:
        os.nice(self.increment)


def collate_views(samples: list[tuple[list[torch.Tensor], int]]) -> tuple[list[torch.Tensor], int]:
    """A batch of :class:`TrainStream` items: each view stacked, and the skipped counts summed to a
    plain int. The default collation made the counts a tensor of its own, which a loader process
    hands over through shared memory like the views: that doubled the time the training process
    spends receiving a batch, time a GPU's training loop needs (2.5 against 1.3 ms for 256 images of
    32 px on a 2-core VM, ``benchmarks/loader_handover.py``)."""
    return default_collate([sample[0] for sample in samples]), sum(sample[1] for sample in samples)


def train_loader(stream: IterableDataset, train: TrainConfig, batch_size: int, *, pin_memory: bool) -> DataLoader:
    """The DataLoader a training worker reads ``stream`` through: ``train.loader_workers`` processes
    (kept across epochs, four batches ahead each), or the training process itself with 0, their
    priority lowered by ``train.loader_nice``."""
    workers = train.loader_workers
    return DataLoader(
        stream,
        batch_size=batch_size,
        collate_fn=collate_views,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_Nice(train.loader_nice) if workers > 0 and train.loader_nice else None,
    )
