"""Loss arithmetic in at least float32, whatever autocast produced."""

from __future__ import annotations

from torch import Tensor


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` as float32 when it is a lower-precision float (bf16/fp16 under autocast), else as is."""
    return x.float() if x.is_floating_point() and x.dtype.itemsize < 4 else x
