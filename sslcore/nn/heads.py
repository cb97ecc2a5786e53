"""Projection heads as declarative block lists (after lightly's ``ProjectionHead``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Block = tuple[int, int, nn.Module | None, nn.Module | None]


class ProjectionHead(nn.Module):
    """A stack of ``Linear -> optional norm -> optional activation`` blocks.

    Args:
        blocks: ``(in_dim, out_dim, norm, activation)`` for each layer. A linear layer followed by a
            norm has no bias, since the norm's shift makes it redundant.
        last_bias: Whether the last linear layer (when no norm follows it) has a bias; ``False``
            for heads whose loss is invariant to a shift of the output (VICReg, Barlow Twins).
    """

    def __init__(self, blocks: Sequence[Block], *, last_bias: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim, norm, act) in enumerate(blocks):
            bias = norm is None and (last_bias or i < len(blocks) - 1)
            layers.append(nn.Linear(in_dim, out_dim, bias=bias))
            if norm is not None:
                layers.append(norm)
            if act is not None:
                layers.append(act)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Project features (B, in_dim) to (B, out_dim)."""
        out: Tensor = self.layers(x)
        return out


class SimCLRProjectionHead(ProjectionHead):
    """SimCLR's MLP head, https://arxiv.org/abs/2002.05709 (sec. 2.1): Linear-BN-ReLU-Linear."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__(
            [
                (input_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)),
                (hidden_dim, output_dim, None, None),
            ]
        )


class VICRegProjectionHead(ProjectionHead):
    """VICReg's expander, https://arxiv.org/abs/2105.04906 (sec. 4.1): two Linear-BN-ReLU layers and
    a third linear layer, 8192 wide on a ResNet-50. The last layer has no bias, as in the reference
    code: the loss is invariant to a shift of the embeddings."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__(
            [
                (input_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)),
                (hidden_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)),
                (hidden_dim, output_dim, None, None),
            ],
            last_bias=False,
        )


class BarlowTwinsProjectionHead(VICRegProjectionHead):
    """Barlow Twins' projector, https://arxiv.org/abs/2103.03230 (sec. 3): the same layers as VICReg's
    expander (three linear layers of 8192 units, the first two followed by BN and ReLU, no bias at the
    end: the loss standardises every dimension, which removes a shift)."""


class MoCoV2ProjectionHead(ProjectionHead):
    """MoCo v2's MLP head, https://arxiv.org/abs/2003.04297 (sec. 2): Linear-ReLU-Linear, no BN; with
    ``batch_norm``, Linear-BN-ReLU-Linear (SimCLR's head, which MoCo v3 found ViTs to need)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, *, batch_norm: bool = False) -> None:
        norm = nn.BatchNorm1d(hidden_dim) if batch_norm else None
        super().__init__([(input_dim, hidden_dim, norm, nn.ReLU(inplace=True)), (hidden_dim, output_dim, None, None)])


class BYOLProjectionHead(ProjectionHead):
    """BYOL's projector and predictor, https://arxiv.org/abs/2006.07733 (sec. 3.3):
    "a linear layer with output size 4096 followed by batch normalization, rectified linear units
    (ReLU), and a final linear layer with output dimension 256"."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__(
            [
                (input_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)),
                (hidden_dim, output_dim, None, None),
            ]
        )


class MoCoV3Head(ProjectionHead):
    """MoCo v3's projector and predictor, https://arxiv.org/abs/2104.02057 (sec. 4 and the
    reference ``_build_mlp``): ``num_layers`` Linear layers, BN + ReLU after all but the last, and
    an affine-free BN after the last one when ``last_bn``.

    The reference uses 3 projector layers for ViTs and 2 for ResNets; its predictor has 2 layers,
    with the last BN for ViTs and without it for ResNets.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, last_bn: bool) -> None:
        if num_layers < 2:
            raise ValueError(f"num_layers must be >= 2, got {num_layers}")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        blocks: list[Block] = [
            (dims[i], dims[i + 1], nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)) for i in range(num_layers - 1)
        ]
        blocks.append((dims[-2], dims[-1], nn.BatchNorm1d(output_dim, affine=False) if last_bn else None, None))
        super().__init__(blocks)


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight normalisation ``W = g * V / ||V||`` per output row
    (Salimans & Kingma 2016), as DINO's last layer.

    Attributes:
        weight_v: (out, in) direction parameters.
        weight_g: (out, 1) row norms, initialised to 1; frozen when ``learn_norm`` is false (DINO's
            ``norm_last_layer``).
    """

    def __init__(self, input_dim: int, output_dim: int, *, learn_norm: bool) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(output_dim, input_dim))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(torch.ones(output_dim, 1), requires_grad=learn_norm)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in) -> (B, out)."""
        return F.linear(x, self.weight_g * F.normalize(self.weight_v, dim=1))


class DINOProjectionHead(nn.Module):
    """DINO's head, https://arxiv.org/abs/2104.14294 (sec. 3.1 and appendix): an MLP (GELU,
    optional BN) down to a bottleneck, L2 normalisation, then a weight-normalised linear layer
    onto K prototypes. iBOT and DINOv2 use the same head for patch tokens.

    Attributes:
        mlp: ``num_layers`` linear layers from ``input_dim`` to ``bottleneck_dim``.
        last_layer: :class:`WeightNormLinear` ``bottleneck_dim -> output_dim``; the method cancels
            its gradients during the first epoch(s) (DINO's ``freeze_last_layer``).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        output_dim: int,
        *,
        num_layers: int = 3,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        blocks: list[Block] = [
            (dims[i], dims[i + 1], nn.BatchNorm1d(dims[i + 1]) if batch_norm else None, nn.GELU())
            for i in range(num_layers - 1)
        ]
        blocks.append((dims[-2], dims[-1], None, None))
        self.mlp = ProjectionHead(blocks)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, output_dim, learn_norm=not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        """Features (B, input_dim) -> prototype logits (B, output_dim)."""
        out: Tensor = self.last_layer(F.normalize(self.mlp(x), dim=-1))
        return out
