"""Ingestion: a source becomes validated webdataset shards plus a manifest.

Output goes to ``<shard_root>/<fingerprint[:16]>/``, where the fingerprint covers the source's
contents and the ingest config. A folder that already holds a manifest is complete and is reused,
so re-running ingestion on unchanged inputs does no work and creates no duplicate shards.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sslcore.config import IngestConfig
from sslcore.data.images import RejectedImage, clean_image
from sslcore.data.manifest import MANIFEST_NAME, Manifest, SplitInfo, read_manifest, write_manifest
from sslcore.data.sources import open_source
from sslcore.data.writer import SplitShardWriter, sample_payload

REJECTS_NAME = "rejects.jsonl"


class IngestError(RuntimeError):
    """Ingestion produced no usable output; the message says why and where to look."""


@dataclass(frozen=True)
class IngestResult:
    manifest: Manifest
    folder: Path
    reused: bool


def split_of(content_hash: str, test_fraction: float) -> str:
    """Stable assignment by content: identical images always land in the same split."""
    bucket = int(content_hash[:8], 16) / 0x1_0000_0000
    return "test" if bucket < test_fraction else "train"


def ingest_fingerprint(source_fingerprint: str, cfg: IngestConfig) -> str:
    relevant = cfg.model_dump(mode="json", exclude={"output"})
    blob = json.dumps({"source": source_fingerprint, "config": relevant}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def check_source(cfg: IngestConfig) -> None:
    """Cheap pre-flight: the source exists and is not empty."""
    open_source(cfg.source).check()


def ingest(
    cfg: IngestConfig, shard_root: str | Path, progress: Callable[[int, int], None] | None = None
) -> IngestResult:
    """Validate every input once and write shards and a manifest; reuse a complete earlier output.

    Args:
        cfg: The ingest section of the pipeline config.
        shard_root: Folder under which the fingerprinted output folder is created.
        progress: Called as ``progress(done, rejected)`` after each input.

    Raises:
        SourceError: the source is missing or empty.
        IngestError: no input survived validation.
    """
    source = open_source(cfg.source)
    source.check()
    source_fp = source.fingerprint()
    fingerprint = ingest_fingerprint(source_fp, cfg)
    folder = Path(shard_root).expanduser().resolve() / fingerprint[:16]
    if (folder / MANIFEST_NAME).is_file():
        return IngestResult(read_manifest(folder), folder, reused=True)
    if folder.exists():  # leftovers of an interrupted run: no manifest means nothing in it is complete
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    label_names = source.label_names()
    label_index = {name: i for i, name in enumerate(label_names or ())}
    writers = {
        split: SplitShardWriter(folder, split, cfg.shard_max_samples, cfg.shard_max_bytes)
        for split in ("train", "test")
    }
    class_counts: dict[str, Counter[str]] = {split: Counter() for split in writers}
    rejects: Counter[str] = Counter()
    modes: set[str] = set()
    done = 0
    with open(folder / REJECTS_NAME, "w") as rejects_fh:
        for ordinal, raw in enumerate(source):
            try:
                clean = clean_image(
                    raw.data,
                    min_side=cfg.min_side,
                    max_pixels=cfg.max_pixels,
                    reencode_format=cfg.image_format,
                    jpeg_quality=cfg.jpeg_quality,
                )
            except RejectedImage as exc:
                rejects[exc.reason] += 1
                rejects_fh.write(
                    json.dumps({"key": raw.key, "reason": exc.reason, "detail": exc.detail}) + "\n"
                )
            else:
                content_hash = hashlib.sha256(clean.data).hexdigest()
                split = split_of(content_hash, cfg.test_fraction)
                label = label_index.get(raw.label) if raw.label is not None else None
                meta = {
                    "source_key": raw.key,
                    "width": clean.width,
                    "height": clean.height,
                    "sha256": content_hash,
                    "label": raw.label,
                }
                writers[split].write(f"{ordinal:09d}", sample_payload(clean.data, clean.ext, label, meta))
                if raw.label is not None:
                    class_counts[split][raw.label] += 1
                modes.add(clean.mode)
            done += 1
            if progress is not None:
                progress(done, sum(rejects.values()))

    splits = {}
    for split, writer in writers.items():
        shards = tuple(writer.close())
        splits[split] = SplitInfo(
            samples=sum(s.samples for s in shards),
            shards=shards,
            class_counts=dict(sorted(class_counts[split].items())),
        )
    total = sum(s.samples for s in splits.values())
    if total == 0:
        raise IngestError(
            f"0 usable images after ingestion ({sum(rejects.values())} rejected: "
            f"{dict(rejects) or 'none found'}); see {folder / REJECTS_NAME} and fix the source"
        )
    manifest = Manifest(
        fingerprint=fingerprint,
        source_fingerprint=source_fp,
        source=cfg.source.model_dump(mode="json"),
        config=cfg.model_dump(mode="json"),
        image_mode="L" if modes == {"L"} else "RGB",
        label_names=label_names,
        splits=splits,
        rejects=dict(sorted(rejects.items())),
    )
    write_manifest(manifest, folder)
    return IngestResult(manifest, folder, reused=False)
