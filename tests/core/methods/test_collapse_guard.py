"""The label-free collapse guard: health signals of backbone features and the warning line."""

from __future__ import annotations

import math

import pytest
import torch

from sslcore.health import backbone_health, collapse_warning, embedding_health


def test_healthy_embeddings_raise_no_warning() -> None:
    z = torch.randn(256, 32, generator=torch.Generator().manual_seed(0))
    health = embedding_health(z)
    assert health["health_std_ratio"] == pytest.approx(1.0, abs=0.1)
    assert health["health_std"] == pytest.approx(health["health_std_ratio"] / math.sqrt(32))
    assert health["health_effective_rank"] > 25
    assert collapse_warning(health) is None


def test_complete_collapse_warns_about_both_signals() -> None:
    z = torch.randn(1, 32).expand(64, 32) * torch.rand(64, 1).add(0.5)  # one direction
    warning = collapse_warning(embedding_health(z))
    assert warning is not None and "possible representation collapse" in warning
    assert "std of normalised embeddings" in warning and "effective rank is" in warning


def test_dimensional_collapse_is_caught_by_the_effective_rank() -> None:
    """Samples that vary along one direction only: spread is fine, rank is 1."""
    base = torch.randn(1, 32)
    direction = torch.randn(1, 32)
    z = base + torch.randn(128, 1) * direction
    health = embedding_health(z)
    assert health["health_effective_rank"] == pytest.approx(1.0, abs=1e-3)
    warning = collapse_warning(health)
    assert warning is not None and "effective rank" in warning


def test_backbone_health_uses_eval_mode_and_restores_training() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.BatchNorm1d(8)).train()
    running = net[2].running_mean.clone()
    health = backbone_health(net, torch.randn(16, 3, 2, 2))
    assert net.training and torch.equal(net[2].running_mean, running)  # no statistics were updated
    assert set(health) == {"health_std", "health_std_ratio", "health_effective_rank"}
