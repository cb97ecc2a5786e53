"""sslcore.nn.heads: declarative projection heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslcore.nn.heads import (
    BarlowTwinsProjectionHead,
    MoCoV2ProjectionHead,
    ProjectionHead,
    SimCLRProjectionHead,
    VICRegProjectionHead,
)


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


def test_moco_v2_head_has_no_norm_unless_asked() -> None:
    assert [type(m) for m in MoCoV2ProjectionHead(32, 64, 16).layers] == [nn.Linear, nn.ReLU, nn.Linear]
    head = MoCoV2ProjectionHead(32, 64, 16, batch_norm=True)
    assert [type(m) for m in head.layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head.layers[0].bias is None and head(torch.randn(5, 32)).shape == (5, 16)


@pytest.mark.parametrize("head_class", [VICRegProjectionHead, BarlowTwinsProjectionHead])
def test_vicreg_and_barlow_heads_are_two_linear_bn_relu_then_a_bias_free_linear(head_class: type) -> None:
    head = head_class(32, 64, 16)
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    linears = [m for m in head.layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 64), (64, 64), (64, 16)]
    assert all(m.bias is None for m in linears)  # the losses are invariant to a shift of the output
    assert head(torch.randn(5, 32)).shape == (5, 16)


def test_last_bias_false_only_drops_the_last_layers_bias() -> None:
    head = ProjectionHead([(8, 16, None, nn.ReLU()), (16, 4, None, None)], last_bias=False)
    assert [m.bias is not None for m in head.layers if isinstance(m, nn.Linear)] == [True, False]
