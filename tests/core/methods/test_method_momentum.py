"""Momentum teachers (MoCo v2/v3, BYOL, DINO, DINOv2, BEiT): no gradients, not optimised, and
moved by exactly ``m * teacher + (1 - m) * student`` after the optimizer step; MoCo's FIFO queue."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from sslcore.config import load_config
from sslcore.methods import as_method, build_method
from sslcore.momentum import momentum_copy, update_momentum
from sslcore.nn.queue import FeatureQueue
from sslcore.schedules import StepPlan, momentum_schedule
from sslcore.train import build_optimizer, train_step

CPU = torch.device("cpu")
PLAN = StepPlan(steps_per_epoch=4, total_steps=40, warmup_steps=0, peak_lr=1e-2, final_lr=1e-2, weight_decay=0.0)
TINY = ["model.backbone=test_vit", "model.image_size=16", "model.patch_size=4"]
# (method, student modules, teacher modules, small-head overrides)
PAIRS = {
    "moco_v2": (
        ["backbone", "projection_head"],
        ["key_backbone", "key_projection_head"],
        ["method.projection_hidden_dim=16", "method.projection_dim=8", "method.queue_size=20"],
    ),
    "moco_v3": (
        ["backbone", "projection_head"],
        ["momentum_backbone", "momentum_projection_head"],
        ["method.projection_hidden_dim=16", "method.projection_dim=8", "method.predictor_hidden_dim=16"],
    ),
    "byol": (
        ["backbone", "projection_head"],
        ["target_backbone", "target_projection_head"],
        ["method.projection_hidden_dim=16", "method.projection_dim=8", "method.predictor_hidden_dim=16"],
    ),
    "dino": (
        ["backbone", "head"],
        ["teacher_backbone", "teacher_head"],
        ["method.hidden_dim=16", "method.bottleneck_dim=8", "method.output_dim=32", "method.num_local_crops=1"],
    ),
    "dinov2": (
        ["backbone", "dino_head", "ibot_head"],
        ["teacher_backbone", "teacher_dino_head", "teacher_ibot_head"],
        ["method.hidden_dim=16", "method.bottleneck_dim=8", "method.output_dim=32", "method.ibot_output_dim=32"],
    ),
    "beit": (["backbone"], ["teacher_backbone"], ["method.target_layers=2"]),
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest, and steadiest on a shared CPU, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _views(model: nn.Module, batch: int = 4) -> list[torch.Tensor]:
    sizes = [16, 16] + [8] * (getattr(model, "num_views", 2) - 2)
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, 3, s, s, generator=g) for s in sizes[: getattr(model, "num_views", 2)]]


def _flat(modules: list[nn.Module]) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_teacher_gets_no_gradient_and_moves_by_the_ema_rule(name: str) -> None:
    students, teachers, small = PAIRS[name]
    cfg = load_config(None, [f"method.name={name}", *TINY, *small, "train.weight_decay=0"])
    torch.manual_seed(0)
    model = build_method(cfg)
    student_modules = [getattr(model, n) for n in students]
    teacher_modules = [getattr(model, n) for n in teachers]
    teacher_ids = {id(p) for m in teacher_modules for p in m.parameters()}
    assert all(not p.requires_grad for m in teacher_modules for p in m.parameters())
    # the teacher starts as an exact copy of the student
    assert all(torch.equal(s, t) for s, t in zip(_flat(student_modules), _flat(teacher_modules), strict=True))

    optimizer = build_optimizer(model, cfg.train)
    assert not teacher_ids & {id(p) for g in optimizer.param_groups for p in g["params"]}
    for step in range(2):  # the second step starts from a teacher that differs from the student
        values = as_method(model).step_values(step + 10, PLAN)
        start, end = cfg.method.momentum_start, cfg.method.momentum_end
        assert values.momentum == pytest.approx(momentum_schedule(step + 10, PLAN, start, end))
        teacher_before = _flat(teacher_modules)
        train_step(model, _views(model), optimizer, lr=1e-2, device=CPU, values=values)
        assert all(p.grad is None for m in teacher_modules for p in m.parameters())
        m = values.momentum
        expected = [m * t + (1 - m) * s for t, s in zip(teacher_before, _flat(student_modules), strict=True)]
        for got, want in zip(_flat(teacher_modules), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_update_momentum_closed_forms() -> None:
    student = nn.Linear(3, 2)
    teacher = momentum_copy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in teacher.parameters()]
    update_momentum(student, teacher, 1.0)  # m = 1: frozen
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), before, strict=True))
    update_momentum(student, teacher, 0.0)  # m = 0: copy
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters(), strict=True))
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        update_momentum(student, teacher, 1.5)


@pytest.mark.parametrize(("size", "batch"), [(8, 2), (7, 3), (4, 4), (3, 5)])
def test_queue_is_fifo_with_the_configured_size(size: int, batch: int) -> None:
    queue = FeatureQueue(size, 2)
    assert queue.keys.shape == (size, 2)
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(size))  # random unit vectors at first
    pushed = []
    for i in range(5):
        keys = torch.arange(batch * 2, dtype=torch.float32).view(batch, 2) + 100 * i
        queue.push(keys)
        pushed.extend(keys)
        expected = torch.stack(pushed[-size:])
        torch.testing.assert_close(queue.ordered()[-len(expected) :], expected)  # oldest -> newest
    assert int(queue.ptr) == (5 * min(batch, size)) % size


def test_moco_v2_enqueues_the_normalised_keys_after_using_the_old_queue() -> None:
    from sslcore.losses import infonce

    cfg = load_config(None, ["method.name=moco_v2", *TINY, *PAIRS["moco_v2"][2]])
    torch.manual_seed(0)
    model = build_method(cfg).eval()
    x_query, x_key = _views(model)
    old_queue = model.queue.ordered()
    with torch.no_grad():
        out = model([x_query, x_key])
        query = model.projection_head(model.backbone(x_query))
        key = model.key_projection_head(model.key_backbone(x_key))
    torch.testing.assert_close(out["loss"], infonce(query, key, old_queue, temperature=cfg.method.temperature))
    newest = model.queue.ordered()[-4:]
    torch.testing.assert_close(newest, nn.functional.normalize(key, dim=1))
    torch.testing.assert_close(model.queue.ordered()[:-4], old_queue[4:])
