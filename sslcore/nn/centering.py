"""Teacher-side centering for self-distillation: DINO's running center and DINOv2's Sinkhorn-Knopp.

Both turn teacher logits into targets that do not collapse to one prototype. Both read the global
batch: the center's batch mean is averaged over DDP ranks, and Sinkhorn-Knopp's normalisers are
summed over ranks, through :mod:`sslcore.distributed`, in code the method calls explicitly.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sslcore import distributed
from sslcore.losses.precision import at_least_fp32


class Center(nn.Module):
    """DINO's center ``c`` (Caron et al. 2021, https://arxiv.org/abs/2104.14294, eq. 4):
    ``c <- m * c + (1 - m) * mean_over_global_batch(teacher_logits)``.

    Attributes:
        center: (1, K) the running center, saved with the checkpoint; starts at zero.
    """

    center: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def update(self, teacher_logits: Tensor, momentum: float) -> Tensor:
        """Move the center towards the mean of ``teacher_logits`` (N, K) over the global batch.

        The sum and the row count are summed over DDP ranks, so ranks may hold different N
        (iBOT's masked patches). Returns that global mean (1, K).
        """
        rows = teacher_logits.detach().float().reshape(-1, self.center.shape[1])
        total = _all_reduce(rows.sum(dim=0, keepdim=True), "sum")
        count = _all_reduce(torch.tensor(float(rows.shape[0]), device=rows.device), "sum")
        batch_mean = total / count.clamp(min=1.0)
        self.center.mul_(momentum).add_(batch_mean, alpha=1.0 - momentum)
        return batch_mean


def centered_softmax(teacher_logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """DINO's teacher targets ``softmax((t - c) / tau_t)`` (centering, then sharpening).

    Args:
        teacher_logits: (..., K) teacher head outputs.
        center: (1, K) the current center.
        temperature: ``tau_t`` > 0; small values sharpen.

    Returns:
        Probabilities (..., K), detached.
    """
    return F.softmax((teacher_logits.detach().float() - center) / temperature, dim=-1)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, temperature: float, iterations: int = 3) -> Tensor:
    """DINOv2's teacher targets (Oquab et al. 2023, https://arxiv.org/abs/2304.07193, sec. 4;
    SwAV's algorithm, https://arxiv.org/abs/2006.09882): a soft assignment of the global batch to
    K prototypes in which every prototype gets the same total mass.

    Args:
        teacher_logits: (N, K) this rank's rows of the global batch (N may differ between ranks).
        temperature: ``tau_t`` > 0.
        iterations: Alternating prototype/sample normalisations (DINOv2: 3).

    Returns:
        (N, K) targets whose rows each sum to 1.
    """
    scores = at_least_fp32(teacher_logits.detach()) / temperature
    local_max = scores.max() if scores.numel() else scores.new_tensor(float("-inf"))
    q = torch.exp(scores - _all_reduce(local_max, "max")).T  # (K, N); the shift cancels below
    k = q.shape[0]
    n = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device), "sum")
    q /= _all_reduce(q.sum(), "sum")
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True), "sum") * k  # every prototype: mass 1/K
        q /= q.sum(dim=0, keepdim=True) * n  # every sample: mass 1/N
    return (q * n).T


def _all_reduce(x: Tensor, op: str) -> Tensor:
    """Sum or max of ``x`` over DDP ranks (a copy); ``x`` itself in one process."""
    if not distributed.is_distributed():
        return x
    out = x.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return out
