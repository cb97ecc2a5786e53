"""sslcore.data.writer: size-rotated, byte-deterministic webdataset shards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sslcore.data.manifest import ShardInfo
from sslcore.data.stream import iter_tar_samples
from sslcore.data.tarfmt import encode_sample
from sslcore.data.writer import SplitShardWriter, sample_payload
from sslcore.storage import filesystem

Closed = tuple[str, ShardInfo, list[str], list[str]]


def _payload(i: int, size: int = 100) -> dict[str, bytes]:
    return sample_payload(bytes([i % 256]) * size, "png", i % 3, {"i": i})


def _writer(folder: Path, max_samples: int, max_bytes: int, closed: list[Closed] | None = None) -> SplitShardWriter:
    fs, path = filesystem(str(folder))
    on_close = None if closed is None else (lambda *args: closed.append(args))
    return SplitShardWriter(fs, path, "train", max_samples, max_bytes, on_close=on_close)


def _write(folder: Path, n: int, max_samples: int, max_bytes: int, size: int = 100) -> list[ShardInfo]:
    writer = _writer(folder, max_samples, max_bytes)
    for i in range(n):
        writer.write(f"{i:09d}", _payload(i, size), f"hash{i}")
    return writer.close()


def test_rotation_by_sample_count(tmp_path: Path) -> None:
    shards = _write(tmp_path, 5, max_samples=2, max_bytes=10**9)
    assert [(s.name, s.samples) for s in shards] == [
        ("train-000000.tar", 2),
        ("train-000001.tar", 2),
        ("train-000002.tar", 1),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [s.name for s in shards]  # no temp files
    for shard in shards:
        data = (tmp_path / shard.name).read_bytes()
        assert (shard.bytes, shard.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_rotation_by_bytes(tmp_path: Path) -> None:
    per_sample = len(encode_sample("000000000", _payload(0, 1000)))
    shards = _write(tmp_path, 5, max_samples=100, max_bytes=int(per_sample * 2.5), size=1000)
    assert [s.samples for s in shards] == [2, 2, 1]


def test_a_sample_larger_than_the_limit_gets_its_own_shard(tmp_path: Path) -> None:
    assert [s.samples for s in _write(tmp_path, 3, max_samples=100, max_bytes=1)] == [1, 1, 1]


def test_no_samples_no_shards(tmp_path: Path) -> None:
    assert _write(tmp_path, 0, max_samples=2, max_bytes=10**9) == []
    assert list(tmp_path.iterdir()) == []


def test_on_close_reports_keys_and_hashes(tmp_path: Path) -> None:
    closed: list[Closed] = []
    writer = _writer(tmp_path, 2, 10**9, closed)
    for i in range(3):
        writer.write(f"{i:09d}", _payload(i), f"hash{i}")
    assert len(closed) == 1  # the first shard closed when the third sample arrived
    shards = writer.close()
    assert [(split, info, keys, hashes) for split, info, keys, hashes in closed] == [
        ("train", shards[0], ["000000000", "000000001"], ["hash0", "hash1"]),
        ("train", shards[1], ["000000002"], ["hash2"]),
    ]


def test_samples_read_back(tmp_path: Path) -> None:
    _write(tmp_path, 4, max_samples=3, max_bytes=10**9)
    urls = [str(tmp_path / "train-000000.tar"), str(tmp_path / "train-000001.tar")]
    samples = list(iter_tar_samples(urls))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(4)]
    assert [int(s["cls"]) for s in samples] == [0, 1, 2, 0]
    assert [json.loads(s["json"]) for s in samples] == [{"i": i} for i in range(4)]
    assert samples[1]["png"] == b"\x01" * 100


def test_shards_are_byte_identical_across_runs(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", 7, max_samples=3, max_bytes=10**9)
    b = _write(tmp_path / "b", 7, max_samples=3, max_bytes=10**9)
    assert a == b
    for shard in a:
        assert (tmp_path / "a" / shard.name).read_bytes() == (tmp_path / "b" / shard.name).read_bytes()


@pytest.mark.parametrize(("label", "members"), [(None, {"jpg", "json"}), (4, {"jpg", "json", "cls"})])
def test_sample_payload(label: int | None, members: set[str]) -> None:
    payload = sample_payload(b"img", "jpg", label, {"b": 1, "a": 2})
    assert set(payload) == members
    assert payload["json"] == b'{"a": 2, "b": 1}'
    if label is not None:
        assert payload["cls"] == b"4"


@pytest.mark.parametrize("key", ["a/b", ".hidden", "with.dot"])
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="unsafe sample key"):
        encode_sample(key, {"png": b"x"})
