"""The shard manifest: the contract between ingestion and every later stage.

A manifest exists only for a complete output: it is written last, to a temporary name, then
renamed into place. It holds no timestamps, so the same input and config give identical bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    rejects: dict[str, int] = Field(default_factory=dict, description="Rejected inputs by reason.")

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


def write_manifest(manifest: Manifest, folder: Path) -> Path:
    """Write atomically: a reader sees either no manifest or the complete one."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / MANIFEST_NAME
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final


def read_manifest(path: str | Path) -> Manifest:
    """Load and validate ``path`` (a manifest file or the folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise ManifestError(f"no manifest at {p}: run the ingest stage first (sslpipe ingest)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {p} is not valid JSON ({exc}); re-run ingest") from None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ManifestError(
            f"manifest {p} is malformed at '{where}': {first['msg']}; re-run ingest"
        ) from None
    if manifest.format_version != FORMAT_VERSION:
        raise ManifestError(
            f"manifest {p} has format_version {manifest.format_version}, this sslpipe reads {FORMAT_VERSION}"
        )
    for split in manifest.splits.values():
        for shard in split.shards:
            if Path(shard.name).name != shard.name or shard.name.startswith("."):
                raise ManifestError(f"manifest {p} names shard '{shard.name}' outside its folder")
    return manifest
