"""The per-unit work of ingestion, run in worker processes: read, validate, re-encode, hash.

Kept free of heavy imports (no torch, no webdataset) so that spawned workers start fast.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sslcore.config import IngestConfig, StorageConfig
from sslcore.data.images import RejectedImage, clean_image
from sslcore.data.sources import ImageSource, RawSample, Unit, open_source
from sslcore.data.tarfmt import encode_sample


@dataclass(frozen=True)
class Outcome:
    """What became of one input. ``blob`` holds its tar members, ready to append to a shard."""

    key: str
    source_key: str
    split: str | None
    reject: tuple[str, str] | None = None
    label: int | None = None
    label_name: str | None = None
    sha256: str = ""
    mode: str = ""
    blob: bytes = b""


@dataclass(frozen=True)
class Job:
    cfg: IngestConfig
    storage: StorageConfig | None
    unit: Unit
    skip: frozenset[int]
    skip_upto: int  # indices <= this are skipped too (-1: none)
    label_names: tuple[str, ...] | None = None


def label_index(name: str | None, names: tuple[str, ...] | None) -> int | None:
    """A label's class index: its position in ``names``, or the label itself when it is a number."""
    if name is None:
        return None
    if names is not None:
        return names.index(name) if name in names else None
    return int(name) if name.isdigit() else None


@functools.lru_cache(maxsize=4)
def _source(cfg_json: str, storage: StorageConfig | None) -> ImageSource:
    cfg = IngestConfig.model_validate_json(cfg_json)
    return open_source(cfg.source, storage)


def _outcome(raw: RawSample, cfg: IngestConfig, names: tuple[str, ...] | None) -> Outcome:
    if raw.reject is not None:
        return Outcome(raw.key, raw.source_key, raw.split, reject=raw.reject)
    try:
        clean = clean_image(
            raw.data,
            min_side=cfg.min_side,
            max_pixels=cfg.max_pixels,
            mode=cfg.mode,
            max_short_side=cfg.max_short_side,
            keep_original=cfg.keep_original,
            max_image_bytes=cfg.max_image_bytes,
            reencode_format=cfg.image_format,
            jpeg_quality=cfg.jpeg_quality,
        )
    except RejectedImage as exc:
        return Outcome(raw.key, raw.source_key, raw.split, reject=(exc.reason, exc.detail))
    digest = hashlib.sha256(clean.data).hexdigest()
    meta = {
        "source_key": raw.source_key,
        "label": raw.label,
        "width": clean.width,
        "height": clean.height,
        "original_width": clean.original_width,
        "original_height": clean.original_height,
        "mode": clean.mode,
        "sha256": digest,
    }
    label = label_index(raw.label, names)
    members = {clean.ext: clean.data, "json": json.dumps(meta, sort_keys=True).encode()}
    if label is not None:
        members["cls"] = str(label).encode()
    blob = encode_sample(raw.key, members)
    return Outcome(raw.key, raw.source_key, raw.split, None, label, raw.label, digest, clean.mode, blob)


def process_unit(job: Job) -> list[Outcome]:
    """Every input of ``job.unit`` except the skipped ones, in order."""
    source = _source(job.cfg.model_dump_json(), job.storage)
    skip = job.skip | frozenset(range(job.skip_upto + 1))
    return [_outcome(raw, job.cfg, job.label_names) for raw in source.read_unit(job.unit, skip)]


def event(kind: str, outcome: Outcome) -> dict[str, Any]:
    """A line of the rejects or duplicates report."""
    line: dict[str, Any] = {"key": outcome.key, "source_key": outcome.source_key, "kind": kind}
    if outcome.reject is not None:
        line["reason"], line["detail"] = outcome.reject
    else:
        line["sha256"] = outcome.sha256
    return line


def dumps_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True) + "\n"
