"""sslcore.data.stream: ranks x DataLoader workers read disjoint parts whose union is the split;
evaluation reads whole splits back."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sslcore_data_testing import encode, ingest_digits_once, noise_image
from torch.utils.data import DataLoader
from torchvision.transforms.v2.functional import pil_to_tensor

from sslcore.config import AugmentConfig, load_config
from sslcore.data.ingest import IngestResult
from sslcore.data.stream import TrainStream, assign, iter_tar_samples, load_split_arrays, shard_urls, train_loader
from sslcore.data.writer import SplitShardWriter, sample_payload
from sslcore.storage import filesystem
from sslcore.transforms import MultiView, view_transform


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> IngestResult:
    return ingest_digits_once(tmp_path_factory)


def _as_tensor(image: Image.Image) -> list[torch.Tensor]:
    assert image.mode == "RGB"
    return [pil_to_tensor(image)]


class KeyStream(TrainStream):
    """One pass of the real reader assignment, yielding ``(reader slot, sample key)``."""

    def __iter__(self) -> Iterator[tuple[int, str]]:  # type: ignore[override]
        slot, _ = self.reader_slot()
        for sample in self._pass(0):
            yield slot, sample["__key__"]


def read_one_pass(urls: list[str], world_size: int, workers: int) -> list[tuple[int, int, str]]:
    """``(rank, slot, key)`` for every sample each rank's DataLoader workers read in one pass."""
    seen = []
    for rank in range(world_size):
        stream = KeyStream(urls, _as_tensor, rank=rank, world_size=world_size, seed=3)
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        seen += [(rank, int(slot), key) for slot, key in loader]
    return seen


def keys_of(urls: list[str]) -> list[str]:
    return [sample["__key__"] for sample in iter_tar_samples(urls)]


def test_shard_urls(digits: IngestResult) -> None:
    urls = shard_urls(digits.manifest, digits.folder, "train")
    assert [Path(u).name for u in urls] == [s.name for s in digits.manifest.splits["train"].shards]
    assert all(Path(u).is_file() for u in urls)


@pytest.mark.parametrize(("items", "slots"), [(8, 4), (10, 4), (3, 4), (1, 1), (0, 2)])
def test_assign_is_a_partition(items: int, slots: int) -> None:
    parts = [assign(items, slot, slots) for slot in range(slots)]
    assert sorted(i for part in parts for i in part) == list(range(items))


def test_two_ranks_two_workers_read_disjoint_shards(digits: IngestResult) -> None:
    urls = shard_urls(digits.manifest, digits.folder, "train")
    assert len(urls) >= 4  # more shards than the 4 readers: shard-level assignment
    seen = read_one_pass(urls, world_size=2, workers=2)

    keys = [key for _, _, key in seen]
    assert len(keys) == len(set(keys)), "a sample was read twice"
    assert sorted(keys) == sorted(keys_of(urls)), "the union is not the train split"
    assert len(keys) == digits.manifest.splits["train"].samples
    assert {(rank, slot) for rank, slot, _ in seen} == {(0, 0), (0, 1), (1, 2), (1, 3)}
    reader_of = {key: slot for _, slot, key in seen}
    for url in urls:  # whole shards go to one reader
        assert len({reader_of[k] for k in keys_of([url])}) == 1


def test_fewer_shards_than_readers_splits_by_sample(digits: IngestResult) -> None:
    urls = shard_urls(digits.manifest, digits.folder, "train")[:3]
    seen = read_one_pass(urls, world_size=2, workers=2)

    keys = [key for _, _, key in seen]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(keys_of(urls))
    sizes = Counter(slot for _, slot, _ in seen)
    assert set(sizes) == {0, 1, 2, 3}
    assert max(sizes.values()) - min(sizes.values()) <= 1


def test_each_pass_reshuffles_the_shards(digits: IngestResult) -> None:
    urls = shard_urls(digits.manifest, digits.folder, "train")
    stream = KeyStream(urls, _as_tensor, rank=0, world_size=1, seed=3)
    first = [s["__key__"] for s in stream._pass(0)]
    second = [s["__key__"] for s in stream._pass(1)]
    assert sorted(first) == sorted(second) == sorted(keys_of(urls))
    assert first != second


def test_stream_yields_every_train_image_each_pass(digits: IngestResult) -> None:
    """The real ``__iter__`` (decode, transform): with a buffer of one, each block of N outputs is
    one pass, i.e. the whole train split, and the stream goes on past it."""
    manifest, folder = digits.manifest, digits.folder
    images, _ = load_split_arrays(manifest, folder, "train")
    expected = Counter(np.ascontiguousarray(img.transpose(2, 0, 1)).tobytes() for img in images)
    n = len(images)
    stream = iter(
        TrainStream(shard_urls(manifest, folder, "train"), _as_tensor, rank=0, world_size=1, seed=0, shuffle_buffer=1)
    )
    for _ in range(2):
        items = [next(stream) for _ in range(n)]
        assert all(skipped == 0 for _, skipped in items)
        block = [views for views, _ in items]
        assert all(len(views) == 1 and views[0].shape == (3, 8, 8) for views in block)
        assert Counter(views[0].numpy().tobytes() for views in block) == expected


def test_train_loader_stacks_views_and_sums_skipped_samples_to_an_int(digits: IngestResult) -> None:
    transform = MultiView(view_transform(AugmentConfig(), 16), 2)
    stream = TrainStream(
        shard_urls(digits.manifest, digits.folder, "train"), transform, rank=0, world_size=1, seed=0, shuffle_buffer=16
    )
    train = load_config(None, ["train.loader_workers=1", "train.loader_nice=0"]).train
    views, skipped = next(iter(train_loader(stream, train, 4, pin_memory=False)))
    assert type(skipped) is int and skipped == 0  # no tensor of its own to hand over between processes
    assert len(views) == 2 and all(v.shape == (4, 3, 16, 16) and v.dtype == torch.float32 for v in views)
    # the same batch the default collation gives, views for views
    default_views, default_skipped = next(iter(DataLoader(stream, batch_size=4, num_workers=1)))
    assert default_skipped.tolist() == [0, 0, 0, 0]
    assert all(torch.equal(a, b) for a, b in zip(views, default_views, strict=True))


def test_dataloader_batches_of_views(digits: IngestResult) -> None:
    transform = MultiView(view_transform(AugmentConfig(), 16), 2)
    stream = TrainStream(
        shard_urls(digits.manifest, digits.folder, "train"), transform, rank=0, world_size=1, seed=0, shuffle_buffer=16
    )
    views, skipped = next(iter(DataLoader(stream, batch_size=4, num_workers=2)))
    assert skipped.tolist() == [0, 0, 0, 0]
    assert len(views) == 2
    assert all(v.shape == (4, 3, 16, 16) and v.dtype == torch.float32 for v in views)


def test_a_reader_without_samples_fails_loudly(tmp_path: Path) -> None:
    fs, path = filesystem(str(tmp_path))
    writer = SplitShardWriter(fs, path, "train", 10, 10**9)
    writer.write("000000000", sample_payload(encode(noise_image(8, 8), "PNG"), "png", None, {}), "h")
    (shard,) = writer.close()
    stream = TrainStream([str(tmp_path / shard.name)], _as_tensor, rank=1, world_size=2, seed=0, shuffle_buffer=1)
    with pytest.raises(RuntimeError, match="got no samples"):
        next(iter(stream))


def test_no_shards_is_an_error() -> None:
    with pytest.raises(ValueError, match="no shards"):
        TrainStream([], _as_tensor, rank=0, world_size=1, seed=0)


def test_load_split_arrays_returns_every_digit(digits: IngestResult) -> None:
    got: Counter[tuple[bytes, int]] = Counter()
    for split, info in digits.manifest.splits.items():
        images, labels = load_split_arrays(digits.manifest, digits.folder, split)
        assert len(images) == len(labels) == info.samples
        assert labels.dtype == np.int64 and set(labels.tolist()) <= set(range(10))
        for img, label in zip(images, labels, strict=True):
            assert img.shape == (8, 8, 3) and img.dtype == np.uint8
            assert (img == img[..., :1]).all()  # grayscale replicated
            got[(img[..., 0].tobytes(), int(label))] += 1
    bunch = load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    expected = Counter((img.tobytes(), int(t)) for img, t in zip(pixels, bunch.target, strict=True))
    assert got == expected


class _Niceness(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield [torch.tensor(os.nice(0))], 0  # shaped as TrainStream's items: (views, skipped)


@pytest.mark.parametrize(("workers", "nice"), [(1, 7), (1, 0), (0, 7)])
def test_train_loader_lowers_the_priority_of_its_processes_only(workers: int, nice: int) -> None:
    train = load_config(None, [f"train.loader_workers={workers}", f"train.loader_nice={nice}"]).train
    [([seen], _)] = list(train_loader(_Niceness(), train, batch_size=1, pin_memory=False))
    assert int(seen[0]) == os.nice(0) + (nice if workers else 0)  # the training process keeps its own
