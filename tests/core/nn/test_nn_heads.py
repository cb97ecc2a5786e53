"""sslcore.nn.heads: declarative projection heads."""

from __future__ import annotations

import torch
from torch import nn

from sslcore.nn.heads import ProjectionHead, SimCLRProjectionHead


def test_blocks_become_linear_norm_activation() -> None:
    head = ProjectionHead([(8, 16, nn.BatchNorm1d(16), nn.ReLU()), (16, 4, None, nn.Tanh()), (4, 2, None, None)])
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.Tanh, nn.Linear]
    linears = [m for m in head.layers if isinstance(m, nn.Linear)]
    # a linear followed by a norm has no bias; the others do
    assert [m.bias is not None for m in linears] == [False, True, True]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 4), (4, 2)]
    assert head(torch.randn(3, 8)).shape == (3, 2)


def test_simclr_head_is_linear_bn_relu_linear() -> None:
    head = SimCLRProjectionHead(32, 64, 16)
    assert [type(m) for m in head.layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head(torch.randn(5, 32)).shape == (5, 16)
