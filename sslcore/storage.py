"""Local paths and ``s3://`` URLs behind one small API (fsspec; s3fs for S3).

Writes are all-or-nothing: a local file is written under a hidden temporary name and renamed; an
S3 object only becomes visible once its upload completes. Readers therefore never see a partial
shard, manifest or journal entry.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from sslcore.config import StorageConfig


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def storage_options(url: str, storage: StorageConfig | None) -> dict[str, Any]:
    """s3fs keyword arguments from config; empty for local paths (and for unset fields, so that
    s3fs and botocore read the environment, profile and ``AWS_ENDPOINT_URL`` themselves)."""
    if not url.startswith("s3://") or storage is None:
        return {}
    opts: dict[str, Any] = {}
    if storage.endpoint_url:
        opts["endpoint_url"] = storage.endpoint_url
    if storage.access_key_id is not None:
        opts["key"] = storage.access_key_id.get_secret_value()
    if storage.secret_access_key is not None:
        opts["secret"] = storage.secret_access_key.get_secret_value()
    if storage.profile:
        opts["profile"] = storage.profile
    if storage.region:
        opts["client_kwargs"] = {"region_name": storage.region}
    return opts


def filesystem(url: str, storage: StorageConfig | None = None) -> tuple[AbstractFileSystem, str]:
    """The filesystem for ``url`` and the path inside it.

    fsspec shares instances (and their listing caches) per process; another process may have
    written since, so the caches are dropped: every caller sees the store as it is now.
    """
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url, storage))
    fs.invalidate_cache()
    return fs, path


def join(base: str, *parts: str) -> str:
    return posixpath.join(base.rstrip("/"), *parts) if is_remote(base) else os.path.join(base, *parts)


def put_atomic(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file."""
    if is_local(fs):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        fs.pipe_file(path, data)


def is_local(fs: AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def read_bytes(fs: AbstractFileSystem, path: str) -> bytes:
    data: bytes = fs.cat_file(path)
    return data


@contextlib.contextmanager
def local_folder(url: str, storage: StorageConfig | None = None) -> Iterator[Path]:
    """A folder as a local path: itself when local, else a temporary download of it."""
    if not is_remote(url):
        yield Path(url)
        return
    fs, path = filesystem(url, storage)
    with tempfile.TemporaryDirectory(prefix="sslpipe-") as tmp:
        for remote in fs.find(path):
            target = Path(tmp) / posixpath.relpath(remote, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(target))
        yield Path(tmp)
