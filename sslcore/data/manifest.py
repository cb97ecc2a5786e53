"""The shard manifest: the contract between ingestion and every later stage.

A manifest exists only for a complete output: it is written last, to a temporary name, then
renamed into place. It holds no timestamps, so the same input and config give identical bytes.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sslcore.config import StorageConfig
from sslcore.storage import filesystem, is_file, put_atomic, storage_errors

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    """A manifest that is missing, malformed or inconsistent with its shards."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ShardInfo(_Frozen):
    name: str = Field(description="File name relative to the manifest's folder.")
    samples: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(min_length=64, max_length=64)


class SplitInfo(_Frozen):
    samples: int = Field(ge=0)
    shards: tuple[ShardInfo, ...]
    class_counts: dict[str, int] = Field(default_factory=dict)


class Manifest(_Frozen):
    format_version: int = FORMAT_VERSION
    fingerprint: str = Field(description="Hash of the source fingerprint and the ingest config.")
    source_fingerprint: str
    source: dict[str, Any]
    config: dict[str, Any]
    image_mode: str = Field(description="PIL mode the images decode to, e.g. 'L' or 'RGB'.")
    label_names: tuple[str, ...] | None = None
    splits: dict[str, SplitInfo]
    inputs: int = Field(0, ge=0, description="Inputs seen: samples + rejects + duplicates.")
    rejects: dict[str, int] = Field(default_factory=dict, description="Rejected inputs by reason.")
    duplicates: int = Field(0, ge=0, description="Exact duplicates dropped (first occurrence kept).")

    @property
    def total_samples(self) -> int:
        return sum(s.samples for s in self.splits.values())

    @property
    def num_classes(self) -> int:
        return len(self.label_names or ())

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise ManifestError(f"the shards have no '{name}' split (they have: {', '.join(self.splits)})")
        return self.splits[name]


def manifest_text(manifest: Manifest) -> str:
    return json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def write_manifest(manifest: Manifest, folder: str, storage: StorageConfig | None = None) -> str:
    """Write atomically: a reader sees either no manifest or the complete one. Returns its path."""
    fs, path = filesystem(str(folder), storage)
    target = posixpath.join(path.rstrip("/"), MANIFEST_NAME)
    put_atomic(fs, target, manifest_text(manifest).encode())
    return target


def read_manifest(path: str | Path, storage: StorageConfig | None = None) -> Manifest:
    """Load and validate ``path`` (a manifest file or the folder holding one; local or s3://)."""
    where = str(path)
    fs, p = filesystem(where, storage)
    # is_file, not fs.isfile/isdir: those answer False when the store cannot be reached, and an
    # outage must not read as "no manifest, run ingest" (a user error that is never retried).
    with storage_errors(where, storage, "reading the manifest at"):
        if not is_file(fs, p) and not p.endswith(".json"):
            p = posixpath.join(p.rstrip("/"), MANIFEST_NAME)
            where = where.rstrip("/") + "/" + MANIFEST_NAME
        if not is_file(fs, p):
            raise ManifestError(f"no manifest at {where}: run the ingest stage first (sslpipe ingest)")
        raw = fs.cat_file(p)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {where} is not valid JSON ({exc}); re-run ingest") from None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ManifestError(f"manifest {where} is malformed at '{loc}': {first['msg']}; re-run ingest") from None
    if manifest.format_version != FORMAT_VERSION:
        raise ManifestError(
            f"manifest {where} has format_version {manifest.format_version}, this sslpipe reads {FORMAT_VERSION}"
        )
    for split in manifest.splits.values():
        for shard in split.shards:
            if posixpath.basename(shard.name) != shard.name or shard.name.startswith(".") or "\\" in shard.name:
                raise ManifestError(f"manifest {where} names shard '{shard.name}' outside its folder")
    return manifest
