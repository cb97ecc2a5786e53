"""Projection heads as declarative block lists (after lightly's ``ProjectionHead``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

Block = tuple[int, int, nn.Module | None, nn.Module | None]


class ProjectionHead(nn.Module):
    """A stack of ``Linear -> optional norm -> optional activation`` blocks.

    Args:
        blocks: ``(in_dim, out_dim, norm, activation)`` for each layer. A linear layer followed by a
            norm has no bias, since the norm's shift makes it redundant.
    """

    def __init__(self, blocks: Sequence[Block]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for in_dim, out_dim, norm, act in blocks:
            layers.append(nn.Linear(in_dim, out_dim, bias=norm is None))
            if norm is not None:
                layers.append(norm)
            if act is not None:
                layers.append(act)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Project features (B, in_dim) to (B, out_dim)."""
        return self.layers(x)


class SimCLRProjectionHead(ProjectionHead):
    """SimCLR's MLP head, https://arxiv.org/abs/2002.05709 (sec. 2.1): Linear-BN-ReLU-Linear."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__(
            [
                (input_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)),
                (hidden_dim, output_dim, None, None),
            ]
        )
