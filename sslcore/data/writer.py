"""Deterministic webdataset shard writing with size-based rotation.

Each shard is written under a hidden temporary name and renamed when complete, so a shard file
with its final name is always whole. Tar headers carry fixed metadata (mtime 0, no owner), so the
same samples give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import webdataset as wds

from sslcore.data.manifest import ShardInfo

TAR_OVERHEAD = 3 * 512  # header blocks per member, roughly


class SplitShardWriter:
    """Writes one split's samples to ``<split>-000000.tar``, ``<split>-000001.tar``, ..."""

    def __init__(self, folder: Path, split: str, max_samples: int, max_bytes: int) -> None:
        self.folder = folder
        self.split = split
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.shards: list[ShardInfo] = []
        self._fh: io.BufferedWriter | None = None
        self._tar: wds.TarWriter | None = None
        self._count = 0
        self._bytes = 0

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):06d}.tar"
        self._name = name
        self._tmp = self.folder / f".{name}.tmp"
        self._fh = open(self._tmp, "wb")  # noqa: SIM115 - closed in _close() after the rename
        self._tar = wds.TarWriter(self._fh, user="", group="", mode=0o444, mtime=0.0, encoder=False)
        self._count = 0
        self._bytes = 0

    def write(self, key: str, payload: dict[str, bytes]) -> None:
        size = sum(len(v) + TAR_OVERHEAD for v in payload.values())
        if self._tar is not None and (
            self._count >= self.max_samples or (self._count > 0 and self._bytes + size > self.max_bytes)
        ):
            self._close()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        self._tar.write({"__key__": key, **payload})
        self._count += 1
        self._bytes += size

    def _close(self) -> None:
        if self._tar is None or self._fh is None:
            return
        self._tar.close()  # closes the tar stream, not our file handle
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        final = self.folder / self._name
        os.replace(self._tmp, final)
        self.shards.append(
            ShardInfo(
                name=self._name, samples=self._count, bytes=final.stat().st_size, sha256=sha256_file(final)
            )
        )
        self._tar = None
        self._fh = None

    def close(self) -> list[ShardInfo]:
        self._close()
        return self.shards


def sample_payload(image: bytes, ext: str, label: int | None, meta: dict[str, Any]) -> dict[str, bytes]:
    """The members of one webdataset sample: the image, its class index and its metadata."""
    payload = {ext: image, "json": json.dumps(meta, sort_keys=True).encode()}
    if label is not None:
        payload["cls"] = str(label).encode()
    return payload


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
