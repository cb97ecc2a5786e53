"""Checkpoint folders of a training run in storage (a local folder or ``s3://``): found, checked,
copied and pruned by the driver (``tasks/ray_train.py``) and the workers (``tasks/train_worker.py``) alike.

A folder ``<run>/step-XXXXXXXX/`` (or ``best-step-XXXXXXXX/``) counts as complete when its progress file
parses and its tensor file has the recorded size (:func:`sslcore.train.checkpoint_state`).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from sslcore.config import StorageConfig
from sslcore.storage import filesystem, join, storage_errors
from sslcore.train import META_FILE, STATE_FILE, TrainState, checkpoint_state


def step_of(checkpoint_path: str) -> int:
    match = re.search(r"step-(\d+)/?$", checkpoint_path)
    return int(match.group(1)) if match else -1


def latest_checkpoint(
    storage_path: str, run_name: str, storage: StorageConfig, prefix: str = "step"
) -> tuple[str, TrainState] | None:
    """The newest complete checkpoint folder (``<prefix>-N``) of a run in storage (its URL and
    progress), if any.

    Ray resumes from the checkpoints its controller registered; a driver killed between a
    checkpoint's upload and its registration leaves a newer one only this scan finds, and an upload
    cut short leaves a registered one that is incomplete. A folder counts when its progress file
    parses and its tensor file has the recorded size (:func:`sslcore.train.checkpoint_state`). An
    S3 outage raises :class:`~sslcore.storage.StorageError` rather than passing for "no checkpoint".
    """
    run_url = join(storage_path, run_name)
    fs, root = filesystem(run_url, storage)
    with storage_errors(run_url, storage, "looking for checkpoints in"):
        if not fs.exists(root):
            return None
        for folder in sorted(fs.glob(f"{root}/{prefix}-*"), key=step_of, reverse=True):
            state = checkpoint_state(fs, folder)
            if state is not None:
                return join(run_url, posixpath.basename(folder.rstrip("/"))), state
    return None


def best_checkpoint(storage_path: str, run_name: str, storage: StorageConfig) -> str | None:
    """The complete ``best-step-N`` folder of a run (``train.keep_best``), newest first, if any."""
    found = latest_checkpoint(storage_path, run_name, storage, prefix="best-step")
    return found[0] if found is not None else None


def prune_unregistered(storage_path: str, run_name: str, storage: StorageConfig, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoint folders and delete every other one.

    Ray prunes only the checkpoints its controller registered; one uploaded just before its worker
    died stays behind unregistered (and was used to resume), and one whose upload was cut short is
    registered but incomplete. Both are removed here once the run has finished.
    """
    run_url = join(storage_path, run_name)
    fs, root = filesystem(run_url, storage)
    with storage_errors(run_url, storage, "pruning checkpoints in"):
        folders = sorted((f.rstrip("/") for f in fs.glob(f"{root}/step-*")), key=step_of, reverse=True)
        kept = 0
        for folder in folders:
            if kept < keep and checkpoint_state(fs, folder) is not None:
                kept += 1
            else:
                fs.rm(folder, recursive=True)


def check_uploaded(run_url: str, storage: StorageConfig, step: int) -> None:
    """Rank 0, after ``ray.train.report``: the checkpoint it just uploaded must be complete in
    storage. pyarrow's ``copy_files`` (which Ray uses) drops errors raised when an upload is
    closed, and s3fs uploads small files on close, so a cut upload can look like a success."""
    url = join(run_url, f"step-{step:08d}")
    fs, folder = filesystem(url, storage)
    with storage_errors(url, storage, "checking the uploaded checkpoint"):
        complete = checkpoint_state(fs, folder) is not None
    if not complete:
        raise CheckpointUploadError(
            f"the checkpoint upload to {url} is incomplete (the storage failed during it): the worker group "
            f"restarts from the newest complete checkpoint"
        )


class CheckpointUploadError(OSError):
    """A checkpoint reached storage only in part."""


def upload_best(run_url: str, storage: StorageConfig, local: Path, step: int) -> None:
    """Rank 0: copy the checkpoint just written to ``local`` to ``<run>/best-step-N`` (tensors
    first, progress last, so that a cut copy reads as incomplete) and drop the older best ones."""
    url = join(run_url, f"best-step-{step:08d}")
    fs, folder = filesystem(url, storage)
    with storage_errors(url, storage, "saving the best checkpoint to"):
        fs.makedirs(folder, exist_ok=True)
        for name in (STATE_FILE, META_FILE):
            fs.put_file(str(local / name), f"{folder}/{name}")
        parent = folder.rsplit("/", 1)[0]
        for old in fs.glob(f"{parent}/best-step-*"):
            if old.rstrip("/") != folder.rstrip("/"):
                fs.rm(old, recursive=True)
