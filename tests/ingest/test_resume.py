"""Kill ingestion for real mid-run; the re-run keeps completed shards and ends byte-identical."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from corpus import jpeg_folder
from ingest_helpers import journal_entries, run_ingest, start_ingest, tree_digest, wait_for

from sslcore.config import IngestConfig, StorageConfig, load_config
from sslcore.storage import filesystem

pytestmark = pytest.mark.slow


def _cfg(src: str, *extra: str) -> IngestConfig:
    return load_config(
        None,
        [
            "ingest.source.kind=folder",
            f"ingest.source.path={src}",
            "ingest.source.labels=subfolder",
            "ingest.chunk_size=8",
            "ingest.shard_max_samples=12",
            "ingest.image_format=png",
            "ingest.keep_original=false",  # re-encode everything: slow enough to kill mid-run
            *extra,
        ],
    ).ingest


def _kill_then_resume(cfg: IngestConfig, root: str, folder_of, storage: StorageConfig | None = None):
    proc = start_ingest(cfg, root, storage)
    try:
        wait_for(lambda: folder_of() is not None and journal_entries_at(folder_of(), storage) >= 4, timeout=300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the process and its decode pool, as a container kill would
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    folder = folder_of()
    fs, path = filesystem(folder, storage)
    assert not fs.exists(f"{path}/manifest.json"), "killed before the end: must not look complete"
    done_before = journal_entries_at(folder, storage)
    return run_ingest(cfg, root, storage), done_before


def journal_entries_at(folder: str, storage: StorageConfig | None) -> int:
    if "://" not in folder:
        return journal_entries(Path(folder))
    fs, path = filesystem(folder, storage)
    return len(fs.glob(f"{path}/_journal/*.json"))


def test_killed_local_ingest_resumes_to_identical_output(tmp_path: Path) -> None:
    src = jpeg_folder(tmp_path / "src", 700, classes=4, size=(160, 128))
    cfg = _cfg(str(src), "ingest.workers=1")
    reference = run_ingest(cfg, str(tmp_path / "reference"))

    root = tmp_path / "killed"
    folder_of = lambda: next((str(p) for p in root.iterdir()), None) if root.exists() else None  # noqa: E731
    resumed, done_before = _kill_then_resume(cfg, str(root), folder_of)

    assert resumed["resumed"] >= 4 * 12 * 0.5, "completed shards must be kept, not redone"
    assert done_before >= 4
    assert tree_digest(resumed["folder"]) == tree_digest(reference["folder"])
    assert not list(Path(resumed["folder"]).glob(".*")), "no temporary files left"
    assert not (Path(resumed["folder"]) / "_journal").exists()


def test_killed_s3_ingest_resumes_to_identical_output(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    storage = StorageConfig(endpoint_url=s3_endpoint)
    src = jpeg_folder(tmp_path / "src", 500, classes=4, size=(160, 128))
    fs, _ = filesystem(f"s3://{s3_bucket}", storage)
    fs.put(str(src), f"{s3_bucket}/images", recursive=True)
    cfg = _cfg(f"s3://{s3_bucket}/images", "ingest.workers=2")
    reference = run_ingest(cfg, f"s3://{s3_bucket}/reference", storage)

    def folder_of() -> str | None:
        fs.invalidate_cache()
        found = fs.glob(f"{s3_bucket}/killed/*/_journal/*.json")
        return f"s3://{found[0].rsplit('/_journal/', 1)[0]}" if found else None

    resumed, done_before = _kill_then_resume(cfg, f"s3://{s3_bucket}/killed", folder_of, storage)
    assert done_before >= 4 and resumed["resumed"] > 0
    assert tree_digest(resumed["folder"], storage) == tree_digest(reference["folder"], storage)
