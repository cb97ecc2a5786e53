"""``train.time_budget_s``: the re-plan after every epoch, to the step (the Ray run itself is
covered by the cluster test, which gives a budget that fits one epoch)."""

from __future__ import annotations

import pytest

from sslcore.config import PipelineConfig, load_config
from sslcore.train import plan_steps
from tasks.train_worker import _next_stop, _steps_in_budget


def _cfg(*overrides: str) -> PipelineConfig:
    return load_config(None, ["train.batch_size=64", "train.epochs=10", *overrides])


@pytest.mark.parametrize(
    ("budget", "spent_s", "pace", "step", "expected"),
    [
        (100.0, 20.0, 0.5, 10, 50),  # after the first epoch: 5 epochs exactly
        (110.0, 20.0, 0.5, 10, 55),  # half an epoch more: the last epoch is partial
        (1e6, 20.0, 0.5, 10, 100),  # never more than train.epochs
        (1.0, 20.0, 0.5, 10, 10),  # never fewer than the steps already done
        (100.0, 60.0, 0.25, 30, 40),  # later epochs slowed down: the rest of the budget at the new pace
        (100.0, 120.0, 0.5, 40, 40),  # the budget is spent: stop here
        (100.0, 20.0, 0.5, 14, 54),  # a resumed run: the steps before the restart are done, not re-timed
    ],
)
def test_steps_in_budget(budget: float, spent_s: float, pace: float, step: int, expected: int) -> None:
    cfg = _cfg(f"train.time_budget_s={budget}")
    assert _steps_in_budget(cfg, spent_s, pace, step, plan_steps(cfg, 640)) == expected


def test_a_partial_last_epoch_is_the_last_stop() -> None:
    cfg = _cfg()
    plan = plan_steps(cfg, 640, total_steps=25)
    stops, step = [], 0
    while step < plan.total_steps:
        step = _next_stop(step, plan, every=None)
        stops.append(step)
    assert stops == [10, 20, 25]
    assert [_next_stop(s, plan, every=4) for s in (0, 20, 24)] == [4, 24, 25]
