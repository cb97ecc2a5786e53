"""sslcore.schedules: pure functions of the step, checked against their closed forms."""

from __future__ import annotations

import itertools
import math

import pytest

from sslcore.schedules import cosine_schedule, scaled_lr, warmup_cosine


@pytest.mark.parametrize(("start", "end"), [(1.0, 0.0), (0.996, 1.0), (3e-3, 3e-5)])
@pytest.mark.parametrize("max_steps", [1, 10, 1000])
def test_cosine_endpoints_and_midpoint(start: float, end: float, max_steps: int) -> None:
    assert cosine_schedule(0, max_steps, start, end) == pytest.approx(start)
    assert cosine_schedule(max_steps, max_steps, start, end) == pytest.approx(end)
    assert cosine_schedule(max_steps * 5, max_steps, start, end) == pytest.approx(end)  # held after
    assert cosine_schedule(-3, max_steps, start, end) == pytest.approx(start)  # clamped before
    if max_steps % 2 == 0:
        assert cosine_schedule(max_steps // 2, max_steps, start, end) == pytest.approx((start + end) / 2)


def test_cosine_interior_value() -> None:
    expected = 0.1 + 0.5 * (1.0 - 0.1) * (1 + math.cos(math.pi / 4))
    assert cosine_schedule(25, 100, 1.0, 0.1) == pytest.approx(expected)


@pytest.mark.parametrize("max_steps", [0, -1])
def test_cosine_rejects_non_positive_max_steps(max_steps: int) -> None:
    with pytest.raises(ValueError, match="max_steps must be > 0"):
        cosine_schedule(0, max_steps, 1.0, 0.0)


def test_warmup_is_a_linear_ramp_to_the_peak() -> None:
    values = [warmup_cosine(s, 100, 4, peak=2.0, final=0.0) for s in range(6)]
    assert values[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert values[4] == pytest.approx(2.0)  # decay starts from the peak
    assert values[5] < 2.0


def test_warmup_then_cosine_to_the_final_value() -> None:
    peak, final, warmup, total = 1.0, 0.01, 10, 110
    assert warmup_cosine(total, total, warmup, peak, final) == pytest.approx(final)
    assert warmup_cosine(warmup + 50, total, warmup, peak, final) == pytest.approx((peak + final) / 2)
    decay = [warmup_cosine(s, total, warmup, peak, final) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in itertools.pairwise(decay))


def test_no_warmup_is_plain_cosine() -> None:
    for step in (0, 7, 30):
        assert warmup_cosine(step, 30, 0, 1.0, 0.1) == pytest.approx(cosine_schedule(step, 30, 1.0, 0.1))


def test_warmup_as_long_as_training_does_not_divide_by_zero() -> None:
    assert [warmup_cosine(s, 5, 5, 1.0, 0.0) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


@pytest.mark.parametrize(
    ("base", "batch", "reference", "expected"),
    [(0.1, 256, 256, 0.1), (0.1, 512, 256, 0.2), (2e-3, 64, 256, 5e-4), (0.3, 100, 100, 0.3)],
)
def test_scaled_lr_is_linear_in_batch(base: float, batch: int, reference: int, expected: float) -> None:
    assert scaled_lr(base, batch, reference) == pytest.approx(expected)
