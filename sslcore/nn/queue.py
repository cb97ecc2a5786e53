"""A first-in-first-out memory of past keys: MoCo's dictionary queue.

He et al. 2019, "Momentum Contrast for Unsupervised Visual Representation Learning",
https://arxiv.org/abs/1911.05722, sec. 3.2: "the current mini-batch is enqueued to the dictionary,
and the oldest mini-batch in the queue is removed".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeatureQueue(nn.Module):
    """A ring buffer of ``size`` L2-normalised keys of width ``dim``, saved with the checkpoint.

    It starts filled with random unit vectors (as MoCo's reference does). :meth:`push` overwrites
    the oldest rows, wrapping around, so the queue always holds the ``size`` most recent keys;
    ``size`` need not be a multiple of the batch.

    Attributes:
        keys: (size, dim) the stored keys; row order is storage order, not age.
        ptr: () the row the next key goes to (the oldest row).
    """

    keys: Tensor
    ptr: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got size={size}, dim={dim}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def push(self, batch: Tensor) -> None:
        """Enqueue ``batch`` (B, dim), replacing the B oldest keys; only the last ``size`` rows are
        kept when B exceeds the queue."""
        batch = batch.detach().to(self.keys.dtype)[-self.size :]
        b, start = batch.shape[0], int(self.ptr)
        rows = (torch.arange(b, device=self.keys.device) + start) % self.size
        self.keys[rows] = batch
        self.ptr.fill_((start + b) % self.size)

    def ordered(self) -> Tensor:
        """The keys from oldest to newest, (size, dim); a copy."""
        return torch.roll(self.keys, shifts=-int(self.ptr), dims=0).clone()
