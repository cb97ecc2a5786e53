"""Ingestion: a source becomes validated, de-duplicated webdataset shards plus a manifest.

Output goes to ``<shard_root>/<fingerprint[:16]>/`` (a local folder or an ``s3://`` prefix), where
the fingerprint covers the source's contents and the ingest config.

* **Deterministic.** Inputs are read in sorted order and numbered ``<unit>_<index>``; worker
  processes decode units in parallel but their results are consumed in order, so duplicates,
  splits and shard boundaries never depend on timing. Same inputs + config = identical bytes.
* **Complete or absent.** Shards are written whole (temp file + rename, or a single S3 put); the
  manifest is written last. A folder without a manifest is never presented as a result.
* **Resumable.** Each completed shard is recorded in ``_journal/`` with the keys and hashes it
  holds. A re-run (after a crash, a kill or a Prefect retry) keeps those shards, skips their
  inputs without decoding them, redoes only what was in flight, and ends with the same bytes as an
  uninterrupted run.
* **Clear about storage.** S3 requests are retried (``storage.max_attempts``); an endpoint that
  stays down ends the run with one :class:`~sslcore.storage.StorageError` line (transient: worth a
  retry), a full disk with one :class:`IngestError` line. A manifest still only ever comes after
  complete shards, and a storage error is never taken for "no output here" or "bad journal entry".
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
import posixpath
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fsspec import AbstractFileSystem

from sslcore.config import IngestConfig, StorageConfig
from sslcore.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, SplitInfo, read_manifest, write_manifest
from sslcore.data.sources import ImageSource, open_source
from sslcore.data.worker import Job, Outcome, dumps_line, event, process_unit
from sslcore.data.writer import SplitShardWriter
from sslcore.resources import available_cpus
from sslcore.storage import filesystem, is_disk_full, is_file, join, put_atomic, read_bytes, storage_errors

REJECTS_NAME = "rejects.jsonl"
DUPLICATES_NAME = "duplicates.jsonl"
JOURNAL_DIR = "_journal"
log = logging.getLogger(__name__)
PARALLEL_MIN_INPUTS = 4096

Progress = Callable[[int, int, int | None], None]  # (inputs done, rejected so far, total inputs or None)


class IngestError(RuntimeError):
    """Ingestion produced no usable output; the message says why and where to look."""


@dataclass(frozen=True)
class IngestResult:
    manifest: Manifest
    folder: str  # local path or s3:// URL of the shard folder
    reused: bool  # a complete earlier output was found and kept
    resumed: int = 0  # samples found in completed shards of an interrupted run


def split_of(content_hash: str, test_fraction: float, val_fraction: float = 0.0) -> str:
    """Stable assignment by content: identical images always land in the same split."""
    bucket = int(content_hash[:8], 16) / 0x1_0000_0000
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + val_fraction:
        return "val"
    return "train"


def ingest_fingerprint(source_fingerprint: str, cfg: IngestConfig) -> str:
    relevant = cfg.model_dump(mode="json", exclude={"output", "workers", "chunk_size"})
    blob = json.dumps({"source": source_fingerprint, "config": relevant}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def check_source(cfg: IngestConfig, storage: StorageConfig | None = None) -> None:
    """Cheap pre-flight: the source exists and is not empty."""
    open_source(cfg.source, storage).check()


# --------------------------------------------------------------------------- resume state


@dataclass
class JournalState:
    """What completed shards of an earlier, interrupted run already hold."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done_keys(self) -> set[str]:
        return {k for e in self.entries for k in e["keys"]}

    def shards(self, split: str) -> list[ShardInfo]:
        return [ShardInfo.model_validate(e["shard"]) for e in self.entries if e["split"] == split]

    def resume_point(self, splits: set[str]) -> str:
        """Every input with a key up to this one is accounted for (written, rejected or a duplicate).

        Each split's shards hold that split's samples in key order, so all of a split's samples up
        to the last key of its last complete shard are written; the minimum over splits bounds them all.
        """
        last = []
        for split in splits:
            keys = [e["keys"][-1] for e in self.entries if e["split"] == split]
            last.append(max(keys) if keys else "")
        return min(last) if last else ""


def _load_journal(fs: AbstractFileSystem, folder: str) -> JournalState:
    journal = posixpath.join(folder, JOURNAL_DIR)
    if not fs.exists(journal):
        return JournalState()
    state = JournalState()
    names = sorted(p for p in fs.ls(journal, detail=False) if p.endswith(".json"))
    for i, path in enumerate(names):
        try:
            entry = json.loads(fs.cat_file(path))
            shard = ShardInfo.model_validate(entry["shard"])
            target = posixpath.join(folder, shard.name)
            valid = entry["seq"] == i and fs.exists(target) and fs.size(target) == shard.bytes
        except (ValueError, KeyError, TypeError, FileNotFoundError):  # a storage error is not a bad entry
            valid = False
        if not valid:  # this and every later entry are discarded and their work redone
            for stale in names[i:]:
                fs.rm_file(stale)
            break
        state.entries.append(entry)
    return state


def _clean_folder(fs: AbstractFileSystem, folder: str, keep: set[str]) -> None:
    """Remove shards that no journal entry vouches for, and temp files of an interrupted write."""
    if not fs.exists(folder):
        return
    for path in fs.ls(folder, detail=False):
        name = posixpath.basename(path.rstrip("/"))
        if name == JOURNAL_DIR:
            continue
        if (name.endswith(".tar") and name not in keep) or name.startswith("."):
            fs.rm(path, recursive=True)


# --------------------------------------------------------------------------- the run


def _ordered_results(jobs: list[Job], workers: int) -> Iterator[list[Outcome]]:
    """Run ``process_unit`` over ``jobs`` and yield results in job order, with bounded memory."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield process_unit(job)
        return
    # fork where the platform has it, as torch's DataLoader does: a worker is ready in
    # milliseconds, where spawn/forkserver re-import the caller's __main__ in every worker (often
    # torch: ~1.5 s each). Workers touch no locks of the parent's threads (no logging, no shared
    # event loop); fsspec makes fresh filesystem instances after a fork.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        window: deque[cf.Future[list[Outcome]]] = deque()
        pending = iter(jobs)
        for job in pending:
            window.append(pool.submit(process_unit, job))
            if len(window) >= 2 * workers:
                break
        while window:
            result = window.popleft().result()
            nxt = next(pending, None)
            if nxt is not None:
                window.append(pool.submit(process_unit, nxt))
            yield result


def damaged_shards(fs: AbstractFileSystem, folder: str, manifest: Manifest) -> list[str]:
    """Names of the manifest's shards that are missing or whose size or sha256 differ."""
    damaged = []
    for split in manifest.splits.values():
        for shard in split.shards:
            path = posixpath.join(folder, shard.name)
            try:
                data = read_bytes(fs, path)
            except FileNotFoundError:
                damaged.append(shard.name)
                continue
            if len(data) != shard.bytes or hashlib.sha256(data).hexdigest() != shard.sha256:
                damaged.append(shard.name)
    return damaged


def _expected_splits(cfg: IngestConfig, source_has_split: bool) -> set[str]:
    if cfg.split == "auto" and source_has_split:
        return {"train", "test"}
    return {"train"} | ({"test"} if cfg.test_fraction > 0 else set()) | ({"val"} if cfg.val_fraction > 0 else set())


def ingest(
    cfg: IngestConfig,
    shard_root: str,
    progress: Progress | None = None,
    storage: StorageConfig | None = None,
    verify: bool = False,
) -> IngestResult:
    """Validate every input once and write shards and a manifest; reuse or resume earlier work.

    Args:
        cfg: The ingest section of the pipeline config.
        shard_root: Folder or ``s3://`` prefix under which the fingerprinted output folder goes.
        progress: Called as ``progress(inputs_done, rejected, total_or_None)`` as work completes.
        storage: Credentials and endpoint for ``s3://`` URLs.
        verify: Before reusing a complete output, check every shard against the size and sha256
            in its manifest; if any differs or is missing, write the output again.

    Raises:
        SourceError: the source is missing or empty.
        IngestError: no input survived validation, or the reject rate exceeds
            ``cfg.max_reject_fraction`` (after the rejects report is written), or the disk holding
            the output is full.
        StorageError: the S3 endpoint kept failing past ``storage.max_attempts`` tries of a request.
    """
    source = open_source(cfg.source, storage)
    source.check()
    source_fingerprint = source.fingerprint()
    fingerprint = ingest_fingerprint(source_fingerprint, cfg)
    folder_url = join(str(shard_root), fingerprint[:16])
    hint = "; a manifest is only written over complete shards: run ingest again once it answers, and it resumes"
    try:
        with storage_errors(folder_url, storage, "ingesting into", hint):
            return _ingest_into(cfg, source, storage, folder_url, fingerprint, source_fingerprint, progress, verify)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise IngestError(
            f"no space left on the device holding {folder_url} while writing the shards: free some space, or set "
            f"ingest.output (or work_dir) to a larger disk; a manifest is only written over complete shards, and a "
            f"re-run resumes from the completed ones"
        ) from None


def _ingest_into(
    cfg: IngestConfig,
    source: ImageSource,
    storage: StorageConfig | None,
    folder_url: str,
    fingerprint: str,
    source_fingerprint: str,
    progress: Progress | None,
    verify: bool,
) -> IngestResult:
    fs, folder = filesystem(folder_url, storage)
    folder = folder.rstrip("/")
    # is_file, not fs.isfile: the latter answers False when the store cannot be reached, and a
    # complete output taken for absent would have its shards cleaned away below its manifest.
    if is_file(fs, posixpath.join(folder, MANIFEST_NAME)):
        manifest = read_manifest(folder_url, storage)
        damaged = damaged_shards(fs, folder, manifest) if verify else []
        if not damaged:
            if fs.exists(posixpath.join(folder, JOURNAL_DIR)):
                fs.rm(posixpath.join(folder, JOURNAL_DIR), recursive=True)
            return IngestResult(manifest, folder_url, reused=True)
        # The manifest goes first, so that no reader takes the folder for complete meanwhile; the
        # shards are rewritten whole (the same inputs give the same bytes).
        log.warning(
            "%d shard(s) of %s differ from the manifest (%s): writing them again",
            len(damaged),
            folder_url,
            ", ".join(damaged[:5]),
        )
        fs.rm(posixpath.join(folder, MANIFEST_NAME))
        if fs.exists(posixpath.join(folder, JOURNAL_DIR)):
            fs.rm(posixpath.join(folder, JOURNAL_DIR), recursive=True)
    run = _Run(cfg, source, storage, fs, folder, folder_url, fingerprint, source_fingerprint, progress)
    return run.execute()


class _Run:
    """One (possibly resumed) ingestion into ``folder``."""

    def __init__(
        self,
        cfg: IngestConfig,
        source: ImageSource,
        storage: StorageConfig | None,
        fs: AbstractFileSystem,
        folder: str,
        folder_url: str,
        fingerprint: str,
        source_fingerprint: str,
        progress: Progress | None,
    ) -> None:
        self.cfg, self.source, self.storage = cfg, source, storage
        self.fs, self.folder, self.folder_url = fs, folder, folder_url
        self.fingerprint, self.source_fingerprint = fingerprint, source_fingerprint
        self.progress = progress
        self.label_names = source.label_names()
        self.use_source_split = cfg.split == "auto" and source.provides_split
        self.events: list[dict[str, Any]] = []  # since the last journal entry
        self.new_events: list[dict[str, Any]] = []  # all of this run's
        self.seq = 0
        self.writers: dict[str, SplitShardWriter] = {}
        self.class_counts: dict[str, Counter[str]] = {}
        self.modes: set[str] = set()
        self.open_labels: dict[str, dict[str, int | None]] = {}
        self.open_modes: dict[str, set[str]] = {}

    # -- journal
    def _on_close(self, split: str, info: ShardInfo, keys: list[str], hashes: list[str]) -> None:
        entry = {
            "seq": self.seq,
            "split": split,
            "shard": info.model_dump(mode="json"),
            "keys": keys,
            "hashes": hashes,
            "labels": [self.open_labels[split].get(k) for k in keys],
            "modes": sorted(self.open_modes[split]),
            "events": self.events,
        }
        put_atomic(
            self.fs,
            posixpath.join(self.folder, JOURNAL_DIR, f"{self.seq:06d}.json"),
            json.dumps(entry).encode(),
        )
        self.seq += 1
        self.events = []
        self.open_modes[split] = set()
        for k in keys:
            self.open_labels[split].pop(k, None)

    def _writer(self, split: str, first_index: int) -> SplitShardWriter:
        if split not in self.writers:
            self.writers[split] = SplitShardWriter(
                self.fs,
                self.folder,
                split,
                self.cfg.shard_max_samples,
                self.cfg.shard_max_bytes,
                first_index=first_index,
                on_close=self._on_close,
            )
            self.class_counts.setdefault(split, Counter())
            self.open_labels.setdefault(split, {})
            self.open_modes.setdefault(split, set())
        return self.writers[split]

    def execute(self) -> IngestResult:
        cfg, fs, folder = self.cfg, self.fs, self.folder
        state = _load_journal(fs, folder)
        _clean_folder(fs, folder, keep={e["shard"]["name"] for e in state.entries})
        self.seq = len(state.entries)

        units = self.source.units(cfg.chunk_size)
        splits = _expected_splits(cfg, self.source.provides_split)
        resume_at = state.resume_point(splits)
        done = state.done_keys
        seen = {h for e in state.entries for h in e["hashes"]}
        kept_events = [ev for e in state.entries for ev in e["events"] if ev["key"] <= resume_at]
        rejects: Counter[str] = Counter(ev["reason"] for ev in kept_events if ev["kind"] == "reject")
        duplicates = sum(1 for ev in kept_events if ev["kind"] == "duplicate")
        inputs = len(done) + len(kept_events)
        for e in state.entries:  # completed shards' samples count towards the class totals
            self.modes.update(e["modes"])
            counts = self.class_counts.setdefault(e["split"], Counter())
            for label in e["labels"]:
                if label is not None:
                    counts[self._name(label)] += 1
        for split in {e["split"] for e in state.entries}:
            self._writer(split, first_index=len(state.shards(split)))

        jobs = []
        for unit in units:
            first, last = f"{unit.index:06d}_", f"{unit.index:06d}_999999"
            if last <= resume_at:
                continue
            upto = int(resume_at.split("_")[1]) if resume_at.startswith(first) else -1
            skip = frozenset(int(k.split("_")[1]) for k in done if k.startswith(first))
            jobs.append(Job(cfg, self.storage, unit, skip, upto, self.label_names))

        total = self.source.count()
        rejected_total = sum(rejects.values())
        if self.progress is not None:
            self.progress(inputs, rejected_total, total)
        workers = cfg.workers or available_cpus()
        if cfg.workers is None and total is not None and total < PARALLEL_MIN_INPUTS:
            workers = 1  # starting worker processes costs more than it saves on tiny inputs
        for outcomes in _ordered_results(jobs, workers):
            for o in outcomes:
                inputs += 1
                if o.reject is not None:
                    rejects[o.reject[0]] += 1
                    rejected_total += 1
                    self._event(event("reject", o))
                elif cfg.dedup and o.sha256 in seen:
                    duplicates += 1
                    self._event(event("duplicate", o))
                else:
                    seen.add(o.sha256)
                    self._write(o)
            if self.progress is not None:
                self.progress(inputs, rejected_total, total)
        for writer in self.writers.values():
            writer.close()

        # The reports cover every input, resumed ones included; written whole, then checked.
        all_events = sorted(kept_events + self.new_events, key=lambda ev: ev["key"])
        reject_lines = "".join(dumps_line(ev) for ev in all_events if ev["kind"] == "reject")
        duplicate_lines = "".join(dumps_line(ev) for ev in all_events if ev["kind"] == "duplicate")
        put_atomic(fs, posixpath.join(folder, REJECTS_NAME), reject_lines.encode())
        put_atomic(fs, posixpath.join(folder, DUPLICATES_NAME), duplicate_lines.encode())

        split_infos = {}
        for split in sorted(self.writers):
            shards = tuple(state.shards(split)) + tuple(self.writers[split].shards)
            split_infos[split] = SplitInfo(
                samples=sum(s.samples for s in shards),
                shards=shards,
                class_counts=dict(sorted(self.class_counts.get(split, Counter()).items())),
            )
        samples = sum(s.samples for s in split_infos.values())
        report = join(self.folder_url, REJECTS_NAME)
        if samples == 0:
            raise IngestError(
                f"0 usable images after ingestion ({rejected_total} rejected: {dict(rejects) or 'none found'}); "
                f"see {report} and fix the source"
            )
        if inputs and rejected_total / inputs > cfg.max_reject_fraction:
            raise IngestError(
                f"{rejected_total} of {inputs} inputs rejected ({rejected_total / inputs:.0%} > "
                f"ingest.max_reject_fraction={cfg.max_reject_fraction:g}): {dict(rejects)}; see {report}"
            )
        label_names = self.label_names
        if label_names is None and any(self.class_counts.values()):
            label_names = tuple(sorted({n for c in self.class_counts.values() for n in c}, key=_numeric))
        manifest = Manifest(
            fingerprint=self.fingerprint,
            source_fingerprint=self.source_fingerprint,
            source=cfg.source.model_dump(mode="json"),
            config=cfg.model_dump(mode="json", exclude={"workers", "chunk_size"}),
            image_mode="L" if self.modes == {"L"} else "RGB",
            label_names=label_names,
            splits=split_infos,
            inputs=inputs,
            rejects=dict(sorted(rejects.items())),
            duplicates=duplicates,
        )
        write_manifest(manifest, self.folder_url, self.storage)
        if fs.exists(posixpath.join(folder, JOURNAL_DIR)):
            fs.rm(posixpath.join(folder, JOURNAL_DIR), recursive=True)
        return IngestResult(manifest, self.folder_url, reused=False, resumed=len(done))

    def _event(self, line: dict[str, Any]) -> None:
        self.events.append(line)
        self.new_events.append(line)

    def _name(self, label: int) -> str:
        if self.label_names is not None and label < len(self.label_names):
            return self.label_names[label]
        return str(label)

    def _write(self, o: Outcome) -> None:
        if self.use_source_split and o.split:
            split = o.split
        else:
            split = split_of(o.sha256, self.cfg.test_fraction, self.cfg.val_fraction)
        writer = self._writer(split, first_index=0)
        self.open_labels[split][o.key] = o.label
        self.open_modes[split].add(o.mode)
        self.modes.add(o.mode)
        if o.label is not None:
            self.class_counts[split][self._name(o.label)] += 1
        writer.write_encoded(o.key, o.blob, o.sha256)


def _numeric(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 30, name)
