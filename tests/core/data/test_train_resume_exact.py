"""Resume is exact: stopping after a checkpoint and continuing from it in fresh objects (new model,
optimizer, stream and DataLoader processes) ends with bit-identical weights, optimizer state,
EMA teacher and center to a run that never stopped, on the same learning-rate schedule.

This is the framework-free core of the Ray worker loop (``tasks/train_worker.py``); the Ray tests
kill real workers and whole stages on top of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from sslcore_data_testing import ingest_digits_once
from torch.utils.data import DataLoader

from sslcore.config import PipelineConfig, load_config
from sslcore.data.ingest import IngestResult
from sslcore.data.stream import CountedBatches, TrainStream, shard_urls
from sslcore.methods import as_method, build_method
from sslcore.train import TrainState, build_optimizer, load_state, lr_at, plan_steps, run_steps, save_state

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> IngestResult:
    return ingest_digits_once(tmp_path_factory)


def _cfg() -> PipelineConfig:
    return load_config(
        None,
        [
            "method.name=dino",  # EMA teacher, center, multi-crop, per-step schedules
            "model.backbone=test_resnet",
            "model.image_size=16",
            "method.num_local_crops=2",
            "method.local_crop_size=8",
            "method.output_dim=64",
            "method.hidden_dim=32",
            "method.bottleneck_dim=16",
            "train.batch_size=32",
            "train.epochs=2",
            "train.max_steps_per_epoch=5",
            "train.warmup_epochs=0.5",
            "ray.num_workers=1",
        ],
    )


def _train(cfg: PipelineConfig, digits: IngestResult, folder: Path, *, stop: int, resume: bool) -> tuple[Any, Any]:
    """Train up to step ``stop`` with 2 loader processes, from scratch or from ``folder``."""
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg)
    optimizer = build_optimizer(method, cfg.train)
    state = load_state(folder, method, optimizer) if resume else TrainState()
    manifest = digits.manifest
    stream = TrainStream(
        shard_urls(manifest, digits.folder, "train"),
        as_method(method).view_transform(cfg.augment, cfg.model.image_size),
        rank=0,
        world_size=1,
        seed=cfg.train.seed,
        shuffle_buffer=64,
        sizes=[s.samples for s in manifest.split("train").shards],
        start_batch=state.step,
        batch_size=cfg.train.batch_size,
    )
    loader = DataLoader(stream, batch_size=cfg.train.batch_size, num_workers=2)
    plan = plan_steps(cfg, manifest.split("train").samples)
    batches = CountedBatches(iter(loader), state, limit=0)
    run_steps(method, batches, optimizer, plan, state, stop=stop, device=CPU, amp=False, seed=cfg.train.seed)
    save_state(folder, method, optimizer, state)
    return method, optimizer


def test_resumed_training_matches_the_uninterrupted_run(digits: IngestResult, tmp_path: Path) -> None:
    torch.set_num_threads(1)  # one thread: reductions in a fixed order, so equality can be exact
    cfg = _cfg()
    plan = plan_steps(cfg, digits.manifest.split("train").samples)
    assert plan.total_steps == 10 and plan.warmup_steps > 0

    straight, straight_opt = _train(cfg, digits, tmp_path / "straight", stop=plan.total_steps, resume=False)
    _train(cfg, digits, tmp_path / "resumed", stop=3, resume=False)  # "crash" after step 3
    resumed, resumed_opt = _train(cfg, digits, tmp_path / "resumed", stop=plan.total_steps, resume=True)

    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resuming"  # student, teacher and center
    opt_a, opt_b = straight_opt.state_dict(), resumed_opt.state_dict()
    for key in opt_a["state"]:
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_a["state"][key][field], opt_b["state"][key][field]), (key, field)
    # The learning rate continued on the same schedule: the last step's rate is the plan's.
    assert resumed_opt.param_groups[0]["lr"] == pytest.approx(lr_at(plan, plan.total_steps - 1))


def test_a_different_stop_point_changes_nothing_but_a_different_seed_does(digits: IngestResult, tmp_path: Path) -> None:
    """Guards the test above against passing trivially (e.g. if training did nothing)."""
    torch.set_num_threads(1)
    cfg = _cfg()
    first, _ = _train(cfg, digits, tmp_path / "a", stop=4, resume=False)
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": 1})})
    torch.manual_seed(0)
    second, _ = _train(other, digits, tmp_path / "b", stop=4, resume=False)
    a, b = first.state_dict(), second.state_dict()
    center = next(k for k in a if "center" in k)
    assert not torch.equal(a[center], b[center])
