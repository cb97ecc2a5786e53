"""What every method provides, and the method registry.

A method is an ``nn.Module`` (no other base class) registered with ``@METHODS.register(name)``. It
has a ``backbone`` attribute (the timm model that is kept after pretraining) and the members of
:class:`Method`. The training loop drives it:

1. ``values = method.step_values(step, plan)``: every scheduled value, a pure function of the step;
2. ``out = model(views, values)``: ``"loss"`` plus detached scalars (queue and center updates
   happen here, in the method's own code, never inside a loss function);
3. ``loss.backward()``, then ``method.before_optimizer_step(values)`` (last-layer freezing,
   gradient clipping) and ``optimizer.step()``;
4. ``method.after_optimizer_step(values)``: momentum (EMA) teacher updates.

``views`` is what ``method.view_transform(augment, image_size)`` produced per image, batched: a list
of (B, C, S_i, S_i) tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast

import torch
from PIL import Image
from torch import Tensor, nn

from sslcore import distributed
from sslcore.config import AugmentConfig
from sslcore.registry import Registry
from sslcore.schedules import StepPlan, momentum_schedule
from sslcore.transforms import MultiView, view_transform

METHODS: Registry[Any] = Registry("method")


@dataclass(frozen=True)
class StepValues:
    """Scheduled values at one optimizer step, computed by the loop from the step alone.

    Attributes:
        step: Completed optimizer steps before this one.
        epoch: The epoch this step belongs to (0-based).
        weight_decay: Weight decay for the decaying parameter group; ``None`` keeps the optimizer's.
        momentum: EMA momentum of the teacher / key encoder; ``None`` for methods without one.
        teacher_temp: Teacher softmax temperature (DINO, DINOv2); ``None`` for other methods.
    """

    step: int = 0
    epoch: int = 0
    weight_decay: float | None = None
    momentum: float | None = None
    teacher_temp: float | None = None


def plain_values(step: int, plan: StepPlan) -> StepValues:
    """Step and epoch only: for methods without schedules of their own."""
    return StepValues(step=step, epoch=step // max(plan.steps_per_epoch, 1))


def momentum_values(step: int, plan: StepPlan, start: float, end: float) -> StepValues:
    """Step, epoch and the EMA momentum (cosine from ``start`` to ``end``): the momentum-encoder methods."""
    return StepValues(
        step=step, epoch=plain_values(step, plan).epoch, momentum=momentum_schedule(step, plan, start, end)
    )


class Method(Protocol):
    """The members the training loop uses, besides ``forward(views, values=None)``."""

    backbone: nn.Module
    requires_vit: ClassVar[bool]

    def __call__(self, views: list[Tensor], values: StepValues | None = None) -> dict[str, Tensor]: ...

    def view_transform(self, augment: AugmentConfig, image_size: int) -> Callable[[Image.Image], list[Tensor]]:
        """The per-image transform producing this method's views, in the order ``forward`` takes them."""
        ...

    def step_values(self, step: int, plan: StepPlan) -> StepValues:
        """Every scheduled value at ``step``; pure."""
        ...

    def before_optimizer_step(self, values: StepValues) -> None:
        """Edit gradients after backward (last-layer freezing, clipping)."""
        ...

    def after_optimizer_step(self, values: StepValues) -> None:
        """Update momentum teachers after the optimizer step."""
        ...


def unwrap(model: nn.Module) -> nn.Module:
    """The method inside ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers, or ``model``."""
    for attr in ("_orig_mod", "module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            model = inner
    return model


# Checked with hasattr, not a runtime-checkable isinstance: from Python 3.12 that looks members up
# statically, and so misses the submodules (``backbone``) that nn.Module serves from __getattr__.
METHOD_MEMBERS: tuple[str, ...] = tuple(
    sorted(set(Method.__annotations__) | {n for n, v in vars(Method).items() if callable(v) and not n.startswith("_")})
)


def as_method(model: nn.Module) -> Method:
    """``model`` (or the method it wraps) as a :class:`Method`; ``TypeError`` if it is not one."""
    method = unwrap(model)
    missing = [name for name in METHOD_MEMBERS if not hasattr(method, name)]
    if missing:
        raise TypeError(f"{type(method).__name__} does not implement the Method protocol: no {', '.join(missing)}")
    return cast(Method, method)


def check_views(name: str, views: list[Tensor], expected: int) -> None:
    if len(views) != expected:
        raise ValueError(f"{name} takes {expected} views, got {len(views)}")


def global_pair(z0: Tensor, z1: Tensor, gather: bool) -> tuple[Tensor, Tensor]:
    """Both views' embeddings over the global batch when ``gather`` and training under DDP, else as given.

    For losses computed on the whole batch (VICReg, Barlow Twins): every rank then computes the same loss, and
    with the gather's backward and DDP's gradient averaging that is exactly the single-process gradient.
    """
    if gather and distributed.is_distributed():
        return distributed.gather_with_grad(z0), distributed.gather_with_grad(z1)
    return z0, z1


class TwoViewMethod(nn.Module):
    """What a method with two views of the same recipe, one backbone + head pass over both and no schedules or
    teacher provides (VICReg, Barlow Twins); subclasses set ``backbone`` and ``projection_head`` and write
    ``forward``."""

    num_views = 2
    requires_vit: ClassVar[bool] = False
    backbone: nn.Module
    projection_head: nn.Module

    def joint_pass(self, name: str, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Embeddings of ``[x0, x1]``: one pass over both views keeps BatchNorm statistics joint."""
        check_views(name, views, self.num_views)
        z0, z1 = self.projection_head(self.backbone(torch.cat(views, dim=0))).chunk(2, dim=0)
        return z0, z1

    def view_transform(self, augment: AugmentConfig, image_size: int) -> Callable[[Image.Image], list[Tensor]]:
        return MultiView(view_transform(augment, image_size), self.num_views)

    def step_values(self, step: int, plan: StepPlan) -> StepValues:
        return plain_values(step, plan)

    def before_optimizer_step(self, values: StepValues) -> None:
        """Nothing to do: no frozen layers, no clipping."""

    def after_optimizer_step(self, values: StepValues) -> None:
        """Nothing to do: no teacher."""
