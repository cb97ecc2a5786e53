"""Local paths and ``s3://`` URLs behind one small API (fsspec; s3fs for S3).

Writes are all-or-nothing: a local file is written under a hidden temporary name and renamed; an
S3 object only becomes visible once its upload completes. Readers therefore never see a partial
shard, manifest or journal entry.

S3 requests that fail for a passing reason (5xx, throttling, a dropped connection) are retried
with jittered exponential backoff, ``storage.max_attempts`` times each; past that the caller gets
one :class:`StorageError` line naming the endpoint and the URL (:func:`storage_errors`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from sslcore.config import StorageConfig

DEFAULT_STORAGE = StorageConfig.model_validate({})  # the environment's credentials, default retries


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def storage_options(url: str, storage: StorageConfig | None) -> dict[str, Any]:
    """s3fs keyword arguments from config; empty for local paths (and for unset fields, so that
    s3fs and botocore read the environment, profile and ``AWS_ENDPOINT_URL`` themselves).

    Retries use botocore's ``standard`` mode (``AWS_RETRY_MODE`` may choose ``adaptive``): unlike
    the ``legacy`` default it also retries transient errors such as read timeouts, and its backoff
    is capped, so ``storage.max_attempts`` (which takes the place of ``AWS_MAX_ATTEMPTS``) bounds
    the time one request may take.
    """
    if not url.startswith("s3://"):
        return {}
    storage = storage or DEFAULT_STORAGE
    opts: dict[str, Any] = {
        "config_kwargs": {
            "retries": {
                "mode": os.environ.get("AWS_RETRY_MODE") or "standard",
                "total_max_attempts": storage.max_attempts,
            }
        }
    }
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


class StorageError(OSError):
    """An ``s3://`` URL could not be written or read, even after the retries. The message is one
    line naming the endpoint and the URL, never credentials; worth retrying later."""


#: Failures that are the user's to fix (a missing bucket, denied access): they keep their own type.
_NOT_TRANSIENT = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)


def endpoint_of(storage: StorageConfig | None) -> str:
    """The S3 endpoint in use, for messages: the configured or ``AWS_ENDPOINT_URL`` one (without
    any user or password in it), else AWS's own."""
    url = (storage.endpoint_url if storage else None) or os.environ.get("AWS_ENDPOINT_URL_S3")
    url = url or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return "AWS S3"
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _is_storage_failure(exc: BaseException) -> bool:
    if isinstance(exc, (StorageError, *_NOT_TRANSIENT)) or is_disk_full(exc):
        return False
    if isinstance(exc, OSError):
        return True
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:  # pragma: no cover - s3fs brings botocore
        return False
    return isinstance(exc, BotoCoreError)


@contextlib.contextmanager
def storage_errors(url: str, storage: StorageConfig | None, doing: str, hint: str = "") -> Iterator[None]:
    """Re-raise an S3 failure that outlasted the retries (5xx, throttling, an unreachable or
    vanished endpoint) inside the block as one :class:`StorageError` line: the endpoint, what was
    being done to ``url``, the error and the retry bound. Local paths and other errors pass through."""
    if not is_remote(url):
        yield
        return
    try:
        yield
    except Exception as exc:
        if not _is_storage_failure(exc):
            raise
        attempts = (storage or DEFAULT_STORAGE).max_attempts
        detail = " ".join(str(exc).split())[:300] or "no detail"
        raise StorageError(
            f"S3 endpoint {endpoint_of(storage)} failed while {doing} {url}: {type(exc).__name__}: {detail} "
            f"(still failing after the retries: storage.max_attempts={attempts}){hint}"
        ) from exc


def is_file(fs: AbstractFileSystem, path: str) -> bool:
    """Whether ``path`` is a file; unlike ``fs.isfile``, which answers False to any error, a store
    that cannot be reached raises instead of looking empty."""
    try:
        return bool(fs.info(path)["type"] == "file")
    except FileNotFoundError:
        return False


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
