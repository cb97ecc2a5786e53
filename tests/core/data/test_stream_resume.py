"""TrainStream's data position and corrupt-sample handling.

A stream built at ``start_batch=n`` must deliver exactly the batches ``n, n+1, ...`` of a fresh
stream, augmentations included, with several ranks and DataLoader processes; damaged members and
shards are skipped and counted, and too many of them stop the run.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sslcore_data_testing import encode, ingest_digits_once, noise_image
from torch.utils.data import DataLoader

from sslcore.config import AugmentConfig
from sslcore.data.ingest import IngestResult
from sslcore.data.stream import (
    CorruptDataError,
    CountedBatches,
    TrainStream,
    batches_before,
    shard_urls,
)
from sslcore.data.writer import SplitShardWriter, sample_payload
from sslcore.storage import filesystem
from sslcore.transforms import MultiView, view_transform

BATCH = 16  # per rank


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> IngestResult:
    return ingest_digits_once(tmp_path_factory)


def _stream(digits: IngestResult, rank: int, start_batch: int, *, sizes: bool = True) -> TrainStream:
    manifest = digits.manifest
    return TrainStream(
        shard_urls(manifest, digits.folder, "train"),
        MultiView(view_transform(AugmentConfig(), 8), 2),  # real random augmentations
        rank=rank,
        world_size=2,
        seed=5,
        shuffle_buffer=64,
        sizes=[s.samples for s in manifest.split("train").shards] if sizes else None,
        start_batch=start_batch,
        batch_size=BATCH,
    )


def _batches(stream: TrainStream, count: int, workers: int) -> list[torch.Tensor]:
    loader = DataLoader(stream, batch_size=BATCH, num_workers=workers)
    out = []
    for (views, skipped), _ in zip(loader, range(count), strict=False):
        assert int(skipped.sum()) == 0
        out.append(torch.cat(views))
    return out


@pytest.mark.parametrize("start", [7, 50])
def test_a_resumed_stream_continues_exactly_where_the_run_stopped(digits: IngestResult, start: int) -> None:
    """Two ranks x two loader processes. At 50 batches every reader is past its first pass
    (~360 samples each), so whole passes are skipped by arithmetic; 7 is odd, so the resumed
    DataLoader's worker 0 must take over the old worker 1's part."""
    for rank in range(2):
        fresh = _batches(_stream(digits, rank, 0), start + 6, workers=2)
        resumed = _batches(_stream(digits, rank, start), 6, workers=2)
        for i, (a, b) in enumerate(zip(fresh[start:], resumed, strict=True)):
            assert torch.equal(a, b), f"rank {rank}: batch {start + i} differs after resuming at {start}"


def test_resuming_without_shard_sizes_reads_forward_to_the_same_place(digits: IngestResult) -> None:
    fresh = _batches(_stream(digits, 1, 0), 29, workers=0)
    resumed = _batches(_stream(digits, 1, 25, sizes=False), 4, workers=0)
    assert all(torch.equal(a, b) for a, b in zip(fresh[25:], resumed, strict=True))


def test_augmentations_differ_between_samples_and_passes(digits: IngestResult) -> None:
    (batch,) = _batches(_stream(digits, 0, 0), 1, workers=0)
    first, second = batch[:BATCH], batch[BATCH:]
    assert not torch.equal(first, second), "the two views of a sample must be augmented independently"


@pytest.mark.parametrize(("start", "workers", "expected"), [(0, 2, [0, 0]), (7, 2, [4, 3]), (6, 3, [2, 2, 2])])
def test_batches_before_counts_round_robin(start: int, workers: int, expected: list[int]) -> None:
    assert [batches_before(start, role, workers) for role in range(workers)] == expected


# --------------------------------------------------------------------------- corrupt data


def _damaged_shards(root: Path) -> tuple[list[str], int]:
    """Three shards of 12 images: shard 0 has 2 undecodable members, shard 2 is cut short."""
    fs, path = filesystem(str(root))
    writer = SplitShardWriter(fs, path, "train", 12, 10**9)
    good = 0
    for i in range(36):
        data = encode(noise_image(8, 8, seed=i), "PNG")
        if i in (3, 7):
            data = b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4
        else:
            good += 1
        writer.write(f"{i:09d}", sample_payload(data, "png", None, {}), f"h{i}")
    shards = writer.close()
    last = root / shards[-1].name
    blob = last.read_bytes()
    last.write_bytes(blob[: len(blob) // 2 + 100])  # truncated mid-member
    return [str(root / s.name) for s in shards], good


def test_corrupt_members_and_a_truncated_shard_are_skipped_and_counted(tmp_path: Path) -> None:
    urls, _ = _damaged_shards(tmp_path)
    stream = TrainStream(urls, lambda im: [torch.zeros(1)], rank=0, world_size=1, seed=0, shuffle_buffer=1)
    raw = len(list(stream._shuffled_pass(0, 0, 1)))  # samples (and error markers) in pass 0
    assert 24 < raw < 36, "the cut must lose part of the last shard"
    it = iter(stream)
    consumed = skipped = 0
    while consumed < raw:  # exactly one pass
        _, s = next(it)
        consumed += 1 + s
        skipped += s
    assert consumed == raw
    # The 2 bad members, plus the cut: either an error while reading the tar or a partial sample
    # without its image. The intact samples before the cut still arrive.
    assert skipped == 3


def test_counted_batches_enforce_the_bound(tmp_path: Path) -> None:
    urls, _ = _damaged_shards(tmp_path)
    stream = TrainStream(urls, lambda im: [torch.zeros(1)], rank=0, world_size=1, seed=0, shuffle_buffer=1)
    loader = DataLoader(stream, batch_size=4)

    state = SimpleNamespace(corrupt_samples=0)
    within = CountedBatches(iter(loader), state, limit=100)
    for _ in range(20):  # past the end of the first pass
        views = next(within)
        assert isinstance(views, list) and views[0].shape == (4, 1)
    within.settle()
    assert state.corrupt_samples >= 3

    strict = CountedBatches(iter(loader), SimpleNamespace(corrupt_samples=0), limit=2)
    with pytest.raises(CorruptDataError, match="max_corrupt_samples=2"):
        for _ in range(20):
            next(strict)


def test_ranks_with_uneven_shares_take_the_same_number_of_batches(tmp_path: Path) -> None:
    """Shards of 40, 8 and 8 samples over two ranks: one rank's share of a pass is five times the
    other's, yet both deliver as many batches as asked (the stream wraps into the next pass), so
    DDP ranks never disagree on the step count."""
    fs, path = filesystem(str(tmp_path))
    writer = SplitShardWriter(fs, path, "train", 40, 10**9)
    for i in range(40):
        writer.write(f"a{i:08d}", sample_payload(encode(noise_image(8, 8, seed=i), "PNG"), "png", None, {}), f"a{i}")
    first = writer.close()
    urls = [str(tmp_path / s.name) for s in first]
    for name in ("b", "c"):
        sub = tmp_path / name
        fs, path = filesystem(str(sub))
        writer = SplitShardWriter(fs, path, "train", 8, 10**9)
        for i in range(8):
            blob = encode(noise_image(8, 8, seed=100 + i), "PNG")
            writer.write(f"{name}{i:08d}", sample_payload(blob, "png", None, {}), f"{name}{i}")
        urls += [str(sub / s.name) for s in writer.close()]
    assert len(urls) == 3
    steps = 30  # 30 batches of 4 = 120 samples per rank, several passes of the smaller share
    for rank in range(2):
        stream = TrainStream(urls, lambda im: [torch.zeros(1)], rank=rank, world_size=2, seed=1, shuffle_buffer=4)
        loader = DataLoader(stream, batch_size=4, num_workers=0)
        got = sum(1 for _, _ in zip(loader, range(steps), strict=False))
        assert got == steps, f"rank {rank} ran out after {got} batches"
