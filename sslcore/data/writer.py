"""Deterministic webdataset shard writing with size-based rotation.

A shard is assembled in memory (at most ``max_bytes`` plus one sample) from samples already
encoded as tar members (:mod:`sslcore.data.tarfmt`) and written in one atomic put when complete,
so a shard file under its final name is always whole, locally and on S3.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fsspec import AbstractFileSystem

from sslcore.data.manifest import ShardInfo
from sslcore.data.tarfmt import encode_sample, end_of_archive
from sslcore.storage import put_atomic


@dataclass
class OpenShard:
    """The shard being filled: its samples' keys and content hashes travel to the journal."""

    index: int
    blobs: list[bytes] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    size: int = 0


class SplitShardWriter:
    """Writes one split's samples to ``<split>-000000.tar``, ``<split>-000001.tar``, ...

    Args:
        fs: Target filesystem (local or S3).
        folder: Folder (path inside ``fs``) for the shards.
        split: Split name, the shard file prefix.
        max_samples: Samples per shard at most.
        max_bytes: Approximate bytes per shard at most (a single larger sample gets its own shard).
        first_index: Number of this split's shards already complete (when resuming).
        on_close: Called with ``(split, ShardInfo, keys, hashes)`` after each shard is written.
    """

    def __init__(
        self,
        fs: AbstractFileSystem,
        folder: str,
        split: str,
        max_samples: int,
        max_bytes: int,
        first_index: int = 0,
        on_close: Callable[[str, ShardInfo, list[str], list[str]], None] | None = None,
    ) -> None:
        self.fs = fs
        self.folder = folder.rstrip("/")
        self.split = split
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.next_index = first_index
        self.on_close = on_close
        self.shards: list[ShardInfo] = []
        self._open: OpenShard | None = None

    def write(self, key: str, payload: dict[str, bytes], content_hash: str) -> None:
        """Append a sample given as ``{ext: bytes}``."""
        self.write_encoded(key, encode_sample(key, payload), content_hash)

    def write_encoded(self, key: str, blob: bytes, content_hash: str) -> None:
        """Append a sample already encoded as tar members (``tarfmt.encode_sample``)."""
        size = len(blob)
        shard = self._open
        if shard is not None and (
            len(shard.keys) >= self.max_samples or (shard.keys and shard.size + size > self.max_bytes)
        ):
            self._close()
            shard = None
        if shard is None:
            shard = self._open = OpenShard(self.next_index)
            self.next_index += 1
        shard.blobs.append(blob)
        shard.keys.append(key)
        shard.hashes.append(content_hash)
        shard.size += size

    def _close(self) -> None:
        shard = self._open
        if shard is None:
            return
        data = b"".join(shard.blobs) + end_of_archive(shard.size)
        name = f"{self.split}-{shard.index:06d}.tar"
        put_atomic(self.fs, f"{self.folder}/{name}", data)
        info = ShardInfo(name=name, samples=len(shard.keys), bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        self.shards.append(info)
        self._open = None
        if self.on_close is not None:
            self.on_close(self.split, info, shard.keys, shard.hashes)

    def close(self) -> list[ShardInfo]:
        self._close()
        return self.shards


def sample_payload(image: bytes, ext: str, label: int | None, meta: dict[str, Any]) -> dict[str, bytes]:
    """The members of one webdataset sample: the image, its class index and its metadata."""
    payload = {ext: image, "json": json.dumps(meta, sort_keys=True).encode()}
    if label is not None:
        payload["cls"] = str(label).encode()
    return payload


def sha256_file(fs: AbstractFileSystem, path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
