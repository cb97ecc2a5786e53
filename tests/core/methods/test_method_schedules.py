"""Per-step schedules the loop passes to methods (EMA momentum, teacher temperature, weight decay)
and the epoch loop that drives them."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from sslcore.config import load_config
from sslcore.methods import as_method, build_method
from sslcore.schedules import (
    StepPlan,
    linear_warmup,
    momentum_schedule,
    teacher_temperature,
    weight_decay_schedule,
)
from sslcore.train import TrainState, build_optimizer, lr_at, plan_steps, train_epoch

PLAN = StepPlan(steps_per_epoch=10, total_steps=100, warmup_steps=10, peak_lr=1.0, final_lr=0.0, weight_decay=0.04)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest, and steadiest on a shared CPU, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_momentum_is_byols_cosine_rule() -> None:
    for k in (0, 13, 50, 99, 100, 150):
        expected = 1 - (1 - 0.99) * (math.cos(math.pi * min(k, 100) / 100) + 1) / 2
        assert momentum_schedule(k, PLAN, 0.99, 1.0) == pytest.approx(expected)
    assert momentum_schedule(37, PLAN, 0.999, 0.999) == pytest.approx(0.999)  # MoCo v2: constant


def test_teacher_temperature_warms_up_linearly_then_holds() -> None:
    assert [teacher_temperature(s, PLAN, 0.04, 0.07, 3) for s in (0, 15, 30, 31, 99)] == pytest.approx(
        [0.04, 0.055, 0.07, 0.07, 0.07]
    )
    assert teacher_temperature(0, PLAN, 0.04, 0.07, 0) == pytest.approx(0.07)  # no warm-up
    assert linear_warmup(-1, 10, 1.0, 2.0) == pytest.approx(1.0)


def test_weight_decay_is_constant_or_a_cosine_to_the_end_value() -> None:
    assert weight_decay_schedule(60, PLAN, None) == pytest.approx(0.04)
    assert weight_decay_schedule(0, PLAN, 0.4) == pytest.approx(0.04)
    assert weight_decay_schedule(50, PLAN, 0.4) == pytest.approx(0.22)
    assert weight_decay_schedule(100, PLAN, 0.4) == pytest.approx(0.4)


def test_schedules_are_pure() -> None:
    first = [momentum_schedule(s, PLAN, 0.9, 1.0) for s in range(0, 100, 7)]
    assert first == [momentum_schedule(s, PLAN, 0.9, 1.0) for s in range(0, 100, 7)]


def test_plan_carries_the_configured_weight_decay() -> None:
    cfg = load_config(None, ["train.batch_size=64", "train.weight_decay=0.05"])
    assert plan_steps(cfg, 640).weight_decay == 0.05


def test_train_epoch_takes_the_planned_steps_with_each_steps_schedule() -> None:
    cfg = load_config(
        None,
        [
            "method.name=byol",
            "model.backbone=test_vit",
            "model.patch_size=4",
            "method.projection_hidden_dim=16",
            "method.projection_dim=8",
            "method.predictor_hidden_dim=16",
        ],
    )
    torch.manual_seed(0)
    model = build_method(cfg)
    optimizer = build_optimizer(model, cfg.train)
    plan = StepPlan(steps_per_epoch=3, total_steps=6, warmup_steps=2, peak_lr=1e-3, final_lr=0.0, weight_decay=0.0)
    seen: list[tuple[int, float | None]] = []
    method = as_method(model)
    original = method.after_optimizer_step
    model.after_optimizer_step = lambda values: (seen.append((values.step, values.momentum)), original(values))  # type: ignore[method-assign]
    batches = iter([[torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)] for _ in range(3)])
    state = TrainState(step=3)  # the second epoch
    means, last = train_epoch(model, batches, optimizer, plan, state, device=torch.device("cpu"))
    assert state.step == 6
    assert [s for s, _ in seen] == [3, 4, 5]
    assert [m for _, m in seen] == pytest.approx([momentum_schedule(s, plan, 0.99, 1.0) for s in (3, 4, 5)])
    assert means["lr"] == pytest.approx(sum(lr_at(plan, s) for s in (3, 4, 5)) / 3)
    assert set(means) >= {"loss", "lr", "momentum"} and len(last) == 2
