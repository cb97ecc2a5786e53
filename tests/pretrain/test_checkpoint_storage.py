"""Checkpoint folders in storage: what counts as complete, which one a run resumes from, what is
pruned, and the check of an upload that came back "successful" but is not (no Ray started here;
tests/test_storage_faults.py cuts real uploads through an S3 proxy)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem

from sslcore.config import load_config
from sslcore.methods import build_method
from sslcore.train import META_FILE, STATE_FILE, TrainState, build_optimizer, checkpoint_state, save_state
from tasks.checkpoints import CheckpointUploadError, check_uploaded, latest_checkpoint, prune_unregistered

CFG = load_config(None, ["model.backbone=test_resnet", "method.projection_hidden_dim=16", "method.projection_dim=8"])
RUN = "run-x"


def _save(root: Path, step: int) -> Path:
    method = build_method(CFG)
    folder = root / RUN / f"step-{step:08d}"
    save_state(folder, method, build_optimizer(method, CFG.train), TrainState(step=step))
    return folder


def _truncate(folder: Path) -> None:
    data = (folder / STATE_FILE).read_bytes()
    (folder / STATE_FILE).write_bytes(data[: len(data) // 2])


def test_complete_means_the_progress_file_and_a_tensor_file_of_the_recorded_size(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    folder = _save(tmp_path, 4)
    state = checkpoint_state(fs, str(folder))
    assert state is not None and state.step == 4
    _truncate(folder)
    assert checkpoint_state(fs, str(folder)) is None
    (folder / STATE_FILE).unlink()
    assert checkpoint_state(fs, str(folder)) is None
    other = _save(tmp_path, 8)
    (other / META_FILE).unlink()  # the progress file is written last: its absence means incomplete
    assert checkpoint_state(fs, str(other)) is None


def test_the_newest_complete_checkpoint_is_found_and_only_complete_ones_are_kept(tmp_path: Path) -> None:
    for step in (3, 6, 9, 12):
        _save(tmp_path, step)
    _truncate(tmp_path / RUN / "step-00000012")  # a cut upload, newest by name
    found = latest_checkpoint(str(tmp_path), RUN, CFG.storage)
    assert found is not None and found[0].endswith("step-00000009") and found[1].step == 9
    prune_unregistered(str(tmp_path), RUN, CFG.storage, keep=2)
    assert sorted(p.name for p in (tmp_path / RUN).iterdir()) == ["step-00000006", "step-00000009"]


def test_an_incomplete_upload_fails_the_worker_loudly(tmp_path: Path) -> None:
    run_url = str(tmp_path / RUN)
    _save(tmp_path, 5)
    check_uploaded(run_url, CFG.storage, 5)
    _truncate(tmp_path / RUN / "step-00000005")
    with pytest.raises(CheckpointUploadError, match=r"step-00000005 is incomplete"):
        check_uploaded(run_url, CFG.storage, 5)
