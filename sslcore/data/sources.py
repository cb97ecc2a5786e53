"""Where images come from.

A source lists its inputs cheaply and in a sorted, deterministic order, grouped into *units* of
work (a slice of files, an index range, one input shard). Units are small picklable values; worker
processes call :meth:`ImageSource.read_unit` to fetch the bytes, so reading is parallel too.
Every sample gets the stable key ``<unit>_<index>`` (six digits each), which orders the output.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import json
import posixpath
import struct
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from sslcore.config import (
    DigitsSource,
    FashionMnistSource,
    FolderSource,
    ShardsSource,
    Source,
    StorageConfig,
)
from sslcore.registry import Registry
from sslcore.storage import filesystem, is_remote

FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
IMAGE_MEMBER_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")


class SourceError(ValueError):
    """The source is missing, empty or unreadable; the message says how to fix it."""


def sample_key(unit: int, index: int) -> str:
    return f"{unit:06d}_{index:06d}"


@dataclass(frozen=True)
class RawSample:
    key: str  # ordering key, see sample_key()
    source_key: str  # where it came from: a relative path, an index, shard/member
    data: bytes  # encoded image bytes as found in the source
    label: str | None = None
    split: str | None = None  # the source's own split, if it has one
    reject: tuple[str, str] | None = None  # (reason, detail) when the source itself refuses it


@dataclass(frozen=True)
class Unit:
    """One piece of work: ``index`` orders the units, ``items`` says what to read."""

    index: int
    items: tuple[Any, ...]


class ImageSource(Protocol):
    provides_split: bool  # True when samples carry the source's own train/test split

    def check(self) -> None:
        """Raise :class:`SourceError` if the source is missing or empty; cheap, before any work."""

    def fingerprint(self) -> str:
        """A hash that changes whenever the inputs change."""

    def label_names(self) -> tuple[str, ...] | None: ...

    def count(self) -> int | None:
        """Number of inputs, when known without reading them (for progress)."""

    def units(self, chunk_size: int) -> list[Unit]: ...

    def read_unit(self, unit: Unit, skip: frozenset[int] = frozenset()) -> Iterator[RawSample]:
        """Samples of ``unit`` in order, except the indices in ``skip`` (already written)."""


SOURCES: Registry[type] = Registry("source")


def _chunks(items: Sequence[Any], size: int) -> list[Unit]:
    return [Unit(i, tuple(items[start : start + size])) for i, start in enumerate(range(0, len(items), size))]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode="L").save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- arrays


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    return images, bunch.target.astype(np.int64)


@SOURCES.register("digits")
class DigitsImages:
    """scikit-learn's digits (UCI ML hand-written digits): 1,797 8x8 images, values 0-16."""

    provides_split = False

    def __init__(self, cfg: DigitsSource, storage: StorageConfig | None = None) -> None:
        self.cfg = cfg

    def check(self) -> None:
        return None

    def fingerprint(self) -> str:
        images, labels = _digits_arrays()
        return hashlib.sha256(b"digits" + images.tobytes() + labels.tobytes()).hexdigest()

    def label_names(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(10))

    def count(self) -> int:
        return len(_digits_arrays()[0])

    def units(self, chunk_size: int) -> list[Unit]:
        return _chunks(range(self.count()), chunk_size)

    def read_unit(self, unit: Unit, skip: frozenset[int] = frozenset()) -> Iterator[RawSample]:
        images, labels = _digits_arrays()
        for i, row in enumerate(unit.items):
            if i not in skip:
                yield RawSample(sample_key(unit.index, i), f"digits/{row:05d}", _png(images[row]), str(labels[row]))


def _read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzipped): magic (2 zero bytes, dtype 0x08, ndim), dims, uint8 data."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise SourceError(f"{path} is not an IDX file of unsigned bytes")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=2)
def _fashion_split(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    return (
        _read_idx(posixpath.join(path, f"{prefix}-images-idx3-ubyte.gz")),
        _read_idx(posixpath.join(path, f"{prefix}-labels-idx1-ubyte.gz")),
    )


@SOURCES.register("fashion_mnist")
class FashionMnistImages:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 train and 10,000 test 28x28 grayscale images."""

    provides_split = True
    FILES = tuple(
        f"{p}-{kind}-idx{n}-ubyte.gz" for p in ("train", "t10k") for kind, n in (("images", 3), ("labels", 1))
    )

    def __init__(self, cfg: FashionMnistSource, storage: StorageConfig | None = None) -> None:
        self.cfg = cfg

    def check(self) -> None:
        import os

        missing = [f for f in self.FILES if not os.path.isfile(os.path.join(self.cfg.path, f))]
        if missing:
            raise SourceError(
                f"ingest.source.path {self.cfg.path} lacks {', '.join(missing)}: install Debian's "
                f"dataset-fashion-mnist or point ingest.source.path at the IDX files"
            )

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"fashion_mnist limit={self.cfg.limit}".encode())
        for name in self.FILES:
            with open(posixpath.join(self.cfg.path, name), "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
        return h.hexdigest()

    def label_names(self) -> tuple[str, ...]:
        return FASHION_MNIST_LABELS

    def _rows(self) -> list[tuple[str, int]]:
        rows: list[tuple[str, int]] = []
        for split in ("train", "test"):
            n = len(_fashion_split(self.cfg.path, split)[1])
            rows += [(split, i) for i in range(min(n, self.cfg.limit or n))]
        return rows

    def count(self) -> int:
        return len(self._rows())

    def units(self, chunk_size: int) -> list[Unit]:
        return _chunks(self._rows(), chunk_size)

    def read_unit(self, unit: Unit, skip: frozenset[int] = frozenset()) -> Iterator[RawSample]:
        for i, (split, row) in enumerate(unit.items):
            if i in skip:
                continue
            images, labels = _fashion_split(self.cfg.path, split)
            label = FASHION_MNIST_LABELS[int(labels[row])]
            yield RawSample(sample_key(unit.index, i), f"{split}/{row:05d}", _png(images[row]), label, split)


# --------------------------------------------------------------------------- files


def _load_label_file(path: str, storage: StorageConfig | None) -> dict[str, str]:
    fs, p = filesystem(path, storage)
    if not fs.exists(p):
        raise SourceError(f"ingest.source.labels_file {path} does not exist")
    text = fs.cat_file(p).decode("utf-8")
    labels: dict[str, str] = {}
    if path.endswith((".jsonl", ".json")):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    labels[str(row["path"])] = str(row["label"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise SourceError(f"{path}:{n}: expected a JSON object with 'path' and 'label'") from None
    else:
        reader = csv.reader(io.StringIO(text))
        for n, row in enumerate(reader, 1):
            if not row or (n == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]):
                continue
            if len(row) < 2:
                raise SourceError(f"{path}:{n}: expected 'path,label'")
            labels[row[0].strip()] = row[1].strip()
    return labels


@SOURCES.register("folder")
class FolderImages:
    """Image files under a local folder or an S3 prefix, recursively, in sorted path order."""

    provides_split = False

    def __init__(self, cfg: FolderSource, storage: StorageConfig | None = None) -> None:
        self.cfg = cfg
        self.storage = storage
        self.fs, self.root = filesystem(cfg.path, storage)
        self.root = self.root.rstrip("/")

    @functools.cached_property
    def _listing(self) -> list[tuple[str, int, str]]:
        """(relative path, size, version) of every file with an image extension."""
        exts = {e.lower() for e in self.cfg.extensions}
        found = self.fs.find(self.root, detail=True)
        rows = []
        for path, info in found.items():
            if info.get("type", "file") != "file":
                continue
            if posixpath.splitext(path)[1].lower() not in exts:
                continue
            rel = posixpath.relpath(path, self.root) if not is_remote(self.cfg.path) else path[len(self.root) + 1 :]
            version = str(info.get("ETag") or info.get("mtime") or info.get("LastModified") or "")
            rows.append((rel, int(info.get("size") or 0), version))
        return sorted(rows)

    @functools.cached_property
    def _file_labels(self) -> dict[str, str]:
        if self.cfg.labels != "file" or self.cfg.labels_file is None:
            return {}
        return _load_label_file(self.cfg.labels_file, self.storage)

    def check(self) -> None:
        where = f"ingest.source.path {self.cfg.path}"
        if not self.fs.exists(self.root):
            raise SourceError(f"{where} does not exist: point it at a folder (or s3:// prefix) of images")
        if not self.fs.isdir(self.root):
            raise SourceError(f"{where} is not a folder: point it at a folder (or s3:// prefix) of images")
        if not self._listing:
            raise SourceError(
                f"{where} holds no files with an image extension ({', '.join(self.cfg.extensions)}): "
                f"add images or fix the path"
            )
        if self.cfg.labels == "subfolder" and not self.label_names():
            raise SourceError(f"ingest.source.labels=subfolder but {self.cfg.path} has no class sub-folders")
        if self.cfg.labels == "file" and not self._file_labels:
            raise SourceError(f"ingest.source.labels_file {self.cfg.labels_file} holds no labels")

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"folder")
        for rel, size, version in self._listing:
            h.update(f"{rel}\0{size}\0{version}\n".encode())
        for rel, label in sorted(self._file_labels.items()):
            h.update(f"label\0{rel}\0{label}\n".encode())
        return h.hexdigest()

    def _label(self, rel: str) -> str | None:
        if self.cfg.labels == "subfolder":
            parts = rel.split("/")
            return parts[0] if len(parts) > 1 else None
        if self.cfg.labels == "file":
            return self._file_labels.get(rel)
        return None

    def label_names(self) -> tuple[str, ...] | None:
        if self.cfg.labels == "none":
            return None
        return tuple(sorted({lab for rel, _, _ in self._listing if (lab := self._label(rel)) is not None}))

    def count(self) -> int:
        return len(self._listing)

    def units(self, chunk_size: int) -> list[Unit]:
        return _chunks([rel for rel, _, _ in self._listing], chunk_size)

    def read_unit(self, unit: Unit, skip: frozenset[int] = frozenset()) -> Iterator[RawSample]:
        for i, rel in enumerate(unit.items):
            if i in skip:
                continue
            key = sample_key(unit.index, i)
            try:
                data = self.fs.cat_file(f"{self.root}/{rel}")
            except OSError as exc:
                yield RawSample(key, rel, b"", self._label(rel), reject=("unreadable", type(exc).__name__))
                continue
            yield RawSample(key, rel, data, self._label(rel))


# --------------------------------------------------------------------------- webdataset shards


def _unsafe_reason(member: tarfile.TarInfo, max_bytes: int) -> str | None:
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "path traversal ('..')"
    if member.issym() or member.islnk():
        return "link"
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        return "device or fifo"
    if not member.isreg():
        return f"not a regular file (type {member.type!r})"
    if member.size > max_bytes:
        return f"member of {member.size} bytes exceeds max_member_bytes={max_bytes}"
    return None


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's convention: the key is the path up to the first dot of the file name."""
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem), ext.lower()


def safe_tar_samples(stream: Any, max_member_bytes: int) -> Iterator[tuple[str, dict[str, bytes], str | None]]:
    """Group the regular members of a tar stream into samples; never extracts anything.

    Yields ``(key, {ext: bytes}, None)`` for samples and ``(member name, {}, reason)`` for each
    refused member (absolute path, ``..``, link, device, oversize).
    """
    current: str | None = None
    parts: dict[str, bytes] = {}
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if member.isdir():
                continue
            reason = _unsafe_reason(member, max_member_bytes)
            if reason is not None:
                yield member.name, {}, reason
                continue
            key, ext = _split_member(member.name)
            if current is not None and key != current:
                yield current, parts, None
                parts = {}
            current = key
            fh = tar.extractfile(member)
            parts[ext] = fh.read() if fh is not None else b""
    if current is not None:
        yield current, parts, None


@SOURCES.register("webdataset")
class ShardImages:
    """Existing webdataset shards (``*.tar``); each input shard is one unit."""

    provides_split = False

    def __init__(self, cfg: ShardsSource, storage: StorageConfig | None = None) -> None:
        self.cfg = cfg
        self.fs, self.root = filesystem(cfg.path, storage)
        self.root = self.root.rstrip("/")

    @functools.cached_property
    def _shards(self) -> list[tuple[str, int, str]]:
        found = self.fs.find(self.root, detail=True)
        rows = [
            (path, int(info.get("size") or 0), str(info.get("ETag") or info.get("mtime") or ""))
            for path, info in found.items()
            if path.endswith(".tar") and not posixpath.basename(path).startswith(".")
        ]
        return sorted(rows)

    @functools.cached_property
    def _manifest_labels(self) -> tuple[str, ...] | None:
        path = f"{self.root}/manifest.json"
        if not self.fs.exists(path):
            return None
        try:
            names = json.loads(self.fs.cat_file(path)).get("label_names")
        except (json.JSONDecodeError, AttributeError):
            return None
        return tuple(str(n) for n in names) if isinstance(names, list) else None

    def check(self) -> None:
        if not self.fs.exists(self.root):
            raise SourceError(f"ingest.source.path {self.cfg.path} does not exist")
        if not self._shards:
            raise SourceError(f"ingest.source.path {self.cfg.path} holds no .tar shards")

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"webdataset")
        for path, size, version in self._shards:
            h.update(f"{posixpath.basename(path)}\0{size}\0{version}\n".encode())
        return h.hexdigest()

    def label_names(self) -> tuple[str, ...] | None:
        return self._manifest_labels

    def count(self) -> int | None:
        return None

    def units(self, chunk_size: int) -> list[Unit]:
        return [Unit(i, (path,)) for i, (path, _, _) in enumerate(self._shards)]

    def _label(self, parts: dict[str, bytes]) -> str | None:
        raw = parts.get("cls")
        if raw is None:
            return None
        text = raw.decode("utf-8", "replace").strip()
        names = self._manifest_labels
        if names is not None and text.isdigit() and int(text) < len(names):
            return names[int(text)]
        return text

    def read_unit(self, unit: Unit, skip: frozenset[int] = frozenset()) -> Iterator[RawSample]:
        (path,) = unit.items
        shard = posixpath.basename(path)
        with self.fs.open(path, "rb") as stream:
            try:
                for i, (key, parts, reason) in enumerate(safe_tar_samples(stream, self.cfg.max_member_bytes)):
                    if i in skip:
                        continue
                    sample = sample_key(unit.index, i)
                    if reason is not None:
                        yield RawSample(sample, f"{shard}/{key}", b"", reject=("unsafe_tar_member", reason))
                        continue
                    image = next((parts[e] for e in IMAGE_MEMBER_EXTS if e in parts), None)
                    if image is None:
                        yield RawSample(sample, f"{shard}/{key}", b"", reject=("no_image_member", ", ".join(parts)))
                        continue
                    yield RawSample(sample, f"{shard}/{key}", image, self._label(parts))
            except tarfile.TarError as exc:
                yield RawSample(sample_key(unit.index, 999_999), shard, b"", reject=("corrupt_shard", str(exc)))


def open_source(cfg: Source, storage: StorageConfig | None = None) -> ImageSource:
    source: ImageSource = SOURCES.get(cfg.kind)(cfg, storage)
    return source
