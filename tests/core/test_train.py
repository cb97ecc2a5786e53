"""sslcore.train: the step plan, the optimizer's parameter groups, one step, and checkpoint state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from sslcore.backbones import create_backbone
from sslcore.config import PipelineConfig, load_config
from sslcore.methods import build_method
from sslcore.train import (
    STATE_FILE,
    TrainState,
    amp_enabled,
    autocast,
    backbone_state_dict,
    build_optimizer,
    load_state,
    lr_at,
    plan_steps,
    read_meta,
    replan_steps,
    save_state,
    train_step,
)

CPU = torch.device("cpu")


def _cfg(*overrides: str) -> PipelineConfig:
    return load_config(
        None,
        [
            "model.backbone=test_resnet",
            "method.projection_hidden_dim=32",
            "method.projection_dim=16",
            *overrides,
        ],
    )


def _views(batch: int = 4, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)]


def _assert_same_tree(a: Any, b: Any, where: str = "") -> None:
    """Recursive equality for state dicts: tensors bitwise, everything else with ==."""
    assert type(a) is type(b), where
    if isinstance(a, Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# --------------------------------------------------------------------------- plan


@pytest.mark.parametrize(
    ("samples", "batch", "cap", "steps"),
    [
        (1000, 64, None, 15),
        (1023, 64, None, 15),
        (1024, 64, None, 16),
        (64, 64, None, 1),
        (1000, 64, 4, 4),
        (1000, 64, 100, 15),
    ],
)
def test_plan_steps_per_epoch(samples: int, batch: int, cap: int | None, steps: int) -> None:
    overrides = [f"train.batch_size={batch}", "train.epochs=3", "train.warmup_epochs=1", "train.lr=0.004"]
    if cap is not None:
        overrides.append(f"train.max_steps_per_epoch={cap}")
    plan = plan_steps(_cfg(*overrides), samples)
    assert plan.steps_per_epoch == steps
    assert plan.total_steps == 3 * steps
    assert plan.warmup_steps == steps
    assert plan.peak_lr == pytest.approx(0.004 * batch / 256)
    assert plan.final_lr == pytest.approx(plan.peak_lr * 0.01)


def test_plan_warmup_is_rounded_and_capped() -> None:
    assert plan_steps(_cfg("train.batch_size=64", "train.warmup_epochs=0.5"), 640).warmup_steps == 5
    assert plan_steps(_cfg("train.batch_size=64", "train.warmup_epochs=0"), 640).warmup_steps == 0
    plan = plan_steps(_cfg("train.batch_size=64", "train.epochs=2", "train.warmup_epochs=50"), 640)
    assert plan.warmup_steps == plan.total_steps == 20


def test_plan_with_total_steps_may_end_within_an_epoch() -> None:
    plan = plan_steps(_cfg("train.batch_size=64", "train.epochs=9", "train.warmup_epochs=1"), 640, total_steps=25)
    assert (plan.steps_per_epoch, plan.total_steps, plan.warmup_steps) == (10, 25, 10)
    assert lr_at(plan, 25) == pytest.approx(plan.final_lr)  # the schedule ends with the shorter run


@pytest.mark.parametrize("total", [3, 25, 200])
def test_a_replan_changes_only_the_length_and_the_clamped_warmup(total: int) -> None:
    """What a resumed or time-budgeted run does without planning (and checking) the run again."""
    cfg = _cfg("train.batch_size=64", "train.epochs=9", "train.warmup_epochs=1")
    planned = plan_steps(cfg, 640)
    assert replan_steps(planned, cfg.train, total) == plan_steps(cfg, 640, total_steps=total)
    assert replan_steps(replan_steps(planned, cfg.train, 2), cfg.train, total).warmup_steps == min(10, total)


def test_plan_needs_one_global_batch() -> None:
    with pytest.raises(ValueError, match=r"63 samples, fewer than one global batch \(train.batch_size=64\)"):
        plan_steps(_cfg("train.batch_size=64"), 63)


def test_lr_at_follows_the_plan() -> None:
    plan = plan_steps(_cfg("train.batch_size=64", "train.epochs=4", "train.warmup_epochs=1"), 640)
    assert lr_at(plan, 0) == pytest.approx(plan.peak_lr / plan.warmup_steps)
    assert lr_at(plan, plan.warmup_steps - 1) == pytest.approx(plan.peak_lr)
    assert lr_at(plan, plan.total_steps) == pytest.approx(plan.final_lr)


# --------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_no_weight_decay_on_1d_parameters(optimizer: str) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2), nn.Linear(2, 2))
    frozen = model[3]
    for p in frozen.parameters():
        p.requires_grad_(False)
    cfg = _cfg(f"train.optimizer={optimizer}", "train.weight_decay=0.05").train
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW if optimizer == "adamw" else torch.optim.SGD)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    expected_no_decay = [model[0].bias, model[1].weight, model[1].bias, model[2].bias]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in expected_no_decay}
    if optimizer == "sgd":
        assert decay["momentum"] == 0.9


def test_every_trainable_parameter_is_in_exactly_one_group() -> None:
    model = build_method(_cfg())
    opt = build_optimizer(model, _cfg().train)
    grouped = [id(p) for group in opt.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    assert all(p.ndim <= 1 for p in opt.param_groups[1]["params"])
    assert all(p.ndim > 1 for p in opt.param_groups[0]["params"])


# --------------------------------------------------------------------------- one step


def test_train_step_updates_parameters_and_reports_floats() -> None:
    torch.manual_seed(0)
    cfg = _cfg()
    model = build_method(cfg)
    opt = build_optimizer(model, cfg.train)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = train_step(model, _views(), opt, lr=0.0123, device=CPU, amp=True)
    assert set(out) == {"loss", "embedding_std", "lr"}
    assert all(type(v) is float for v in out.values())
    assert out["lr"] == 0.0123
    assert all(group["lr"] == 0.0123 for group in opt.param_groups)
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("backbone.") and k.endswith("weight") for k in changed)
    assert any(k.startswith("projection_head.") for k in changed)


class _NanModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        return {"loss": (self.w * float("nan")).sum()}


def test_non_finite_loss_raises_before_the_update() -> None:
    model = _NanModel()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train_step(model, _views(), opt, lr=1.0, device=CPU)
    assert torch.equal(model.w.detach(), torch.ones(2))


def test_autocast_on_cpu_only_when_enabled() -> None:
    with autocast(CPU, enabled=True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(CPU, enabled=False):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_amp_enabled_reads_the_setting_of_the_device() -> None:
    train = _cfg("train.amp=true", "train.cpu_amp=false").train
    assert amp_enabled(train, torch.device("cuda")) and not amp_enabled(train, CPU)
    train = _cfg("train.amp=false", "train.cpu_amp=true").train
    assert amp_enabled(train, CPU) and not amp_enabled(train, torch.device("cuda"))
    assert not amp_enabled(train, torch.device("meta"))


# --------------------------------------------------------------------------- checkpoint state


def test_save_and_load_state_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = _cfg()
    model = build_method(cfg)
    opt = build_optimizer(model, cfg.train)
    train_step(model, _views(seed=1), opt, lr=1e-3, device=CPU)
    state = TrainState(epoch=1, step=1, history=[{"loss": 1.5, "lr": 1e-3}])
    save_state(tmp_path, model, opt, state)
    rng_after_save = torch.rand(3)

    torch.manual_seed(123)  # a different init and a different RNG position
    restored = build_method(cfg)
    restored_opt = build_optimizer(restored, cfg.train)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), restored.parameters(), strict=True))
    loaded = load_state(tmp_path, restored, restored_opt)  # torch.load(weights_only=True) inside

    assert loaded == state == read_meta(tmp_path)
    _assert_same_tree(restored.state_dict(), model.state_dict())
    _assert_same_tree(restored_opt.state_dict(), opt.state_dict())
    assert torch.equal(torch.rand(3), rng_after_save)  # the RNG resumes where it was saved

    # The restored pair continues exactly as the original would have.
    views = _views(seed=2)
    train_step(model, views, opt, lr=1e-3, device=CPU)
    train_step(restored, views, restored_opt, lr=1e-3, device=CPU)
    _assert_same_tree(restored.state_dict(), model.state_dict())


class _Wrapped(nn.Module):
    """What a DDP-wrapped method looks like to ``unwrap``: the method under ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_state_saved_from_a_wrapped_model_has_the_method_keys(tmp_path: Path) -> None:
    cfg = _cfg()
    method = build_method(cfg)
    save_state(tmp_path, _Wrapped(method), build_optimizer(method, cfg.train), TrainState())
    restored = build_method(cfg)
    load_state(tmp_path, restored)  # the unwrapped method loads it
    _assert_same_tree(restored.state_dict(), method.state_dict())


def test_wrapped_model_loads_what_it_saved(tmp_path: Path) -> None:
    cfg = _cfg()
    method = build_method(cfg)
    save_state(tmp_path, _Wrapped(method), build_optimizer(method, cfg.train), TrainState())
    restored = build_method(cfg)
    load_state(tmp_path, _Wrapped(restored))
    _assert_same_tree(restored.state_dict(), method.state_dict())


def test_state_file_needs_no_unpickling(tmp_path: Path) -> None:
    cfg = _cfg()
    model = build_method(cfg)
    save_state(tmp_path, model, build_optimizer(model, cfg.train), TrainState())
    blob = torch.load(tmp_path / STATE_FILE, map_location="cpu", weights_only=True)
    assert set(blob) == {"model", "optimizer", "torch_rng"}


def test_backbone_state_dict_loads_strictly_into_a_fresh_backbone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = _cfg()
    model = build_method(cfg)
    opt = build_optimizer(model, cfg.train)
    train_step(model, _views(), opt, lr=1e-2, device=CPU)
    save_state(tmp_path, model, opt, TrainState())

    weights = backbone_state_dict(tmp_path)
    fresh = create_backbone(cfg.model)
    assert set(weights) == set(fresh.state_dict())
    fresh.load_state_dict(weights, strict=True)
    _assert_same_tree(fresh.state_dict(), model.backbone.state_dict())
