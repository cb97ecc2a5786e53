"""torch.distributed helpers that degrade to no-ops in a single process."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def collective_device() -> torch.device:
    """Where a tensor built for a collective must live: the current GPU under NCCL, else the CPU.

    NCCL reduces CUDA tensors only; a CPU tensor fails with "No backend type associated with
    device type cpu".
    """
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice.

    Each rank's loss depends on every rank's embeddings (they are its negatives), so the gradient
    of the global loss for the local slice is the sum of the slices' gradients over ranks.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.batch = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (B, ...) from every rank along dim 0 (equal B on every rank), keeping the
    gradient path to the local part."""
    if not is_distributed():
        return x
    out: Tensor = _GatherWithGrad.apply(x)
    return out


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (a copy; no gradient)."""
    if not is_distributed():
        return x.detach().clone()
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over all ranks (one collective); ``values`` itself outside DDP."""
    if not is_distributed():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def sum_over_ranks(value: int) -> int:
    """An integer summed over all ranks (a collective); ``value`` itself outside DDP."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=collective_device())
    dist.all_reduce(t)
    return int(t.item())
