"""sslcore.evaluation.finetune on scikit-learn's digits with timm's tiny ``test_resnet``: fine-tuning
trains the backbone, at the backbone's own learning rate, and leaves its inputs alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from sslcore.backbones import create_backbone
from sslcore.config import PipelineConfig, load_config
from sslcore.evaluation.finetune import finetune
from sslcore.evaluation.linear import linear_probe
from sslcore.inference import Encoder, EncoderSpec

# It trains: about a second per 3-epoch fine-tune on an idle CPU, but many times that on a busy one
pytestmark = pytest.mark.slow

# 500 digits at 16 px, batches of 32: 15 steps an epoch
FAST = ["model.backbone=test_resnet", "model.image_size=16", "eval.batch_size=32", "eval.finetune_lr=0.01"]
LAST_BLOCK_NORMS = ("layer4.0.bn2", "layer4.0.downsample.2")  # test_resnet's last block: residual + shortcut


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, torch.Tensor, np.ndarray, torch.Tensor]:
    """500 training and 300 test digits as (N, 8, 8, 3) uint8, with their labels."""
    data = load_digits()
    images = np.repeat((data.images * 255 / 16).astype(np.uint8)[..., None], 3, axis=-1)
    labels = torch.as_tensor(data.target)
    return images[:500], labels[:500], images[1400:1700], labels[1400:1700]


def _cfg(*overrides: str) -> PipelineConfig:
    return load_config(None, [*FAST, *overrides])


def _random_init(cfg: PipelineConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_backbone(cfg.model).state_dict()


def _frozen_features(cfg: PipelineConfig, state: dict[str, torch.Tensor], images: np.ndarray) -> torch.Tensor:
    spec = EncoderSpec(model=cfg.model, mean=cfg.augment.mean, std=cfg.augment.std, embedding_dim=0)
    return torch.as_tensor(Encoder.load_from_state(spec, state, "cpu").embed(images))


def test_finetuning_beats_a_linear_probe_on_the_frozen_backbone_it_starts_from(digits) -> None:
    train_x, train_y, test_x, test_y = digits
    cfg = _cfg("eval.finetune_epochs=3", "eval.finetune_backbone_lr_scale=1.0")
    state = _random_init(cfg)
    frozen = linear_probe(
        _frozen_features(cfg, state, train_x), train_y, _frozen_features(cfg, state, test_x), test_y, 10,
        cs=(0.1, 1.0), max_iter=200, val_fraction=0.1, seed=0,
    ).top1  # fmt: skip
    before = {k: v.clone() for k, v in state.items()}
    images_before = train_x.copy(), test_x.copy()

    tuned = finetune(cfg, state, train_x, train_y, test_x, test_y, 10)

    assert tuned > frozen + 0.05, (tuned, frozen)  # about 0.89 against 0.76: the features themselves improved
    untrained = finetune(_cfg("eval.finetune_epochs=0"), state, train_x, train_y, test_x, test_y, 10)
    assert untrained < 0.2  # zero epochs: a random head, about chance (0.1)
    assert all(torch.equal(before[k], v) for k, v in state.items()), "the given backbone state was modified"
    assert np.array_equal(train_x, images_before[0]) and np.array_equal(test_x, images_before[1])


def test_only_a_trained_backbone_can_tell_the_digits_apart(digits) -> None:
    """The last block's norms scaled to 0 (shifted to stay active) make every image's features equal:
    a head alone can then do no better than always answering one class; training the backbone (its
    gradient reaches those scales) recovers the digits. A vanishing backbone learning rate keeps the
    backbone, and so the accuracy, where it started."""
    train_x, train_y, test_x, test_y = digits
    cfg = _cfg()
    state = _random_init(cfg)
    for norm in LAST_BLOCK_NORMS:
        state[f"{norm}.weight"].zero_()
        state[f"{norm}.bias"].fill_(0.5)
    features = _frozen_features(cfg, state, test_x)
    assert torch.equal(features, features[:1].expand_as(features)), "the frozen features are not constant"
    one_class = torch.bincount(test_y).max().item() / len(test_y)

    def top1(backbone_lr_scale: float) -> float:
        cfg = _cfg("eval.finetune_epochs=3", f"eval.finetune_backbone_lr_scale={backbone_lr_scale}")
        return finetune(cfg, state, train_x, train_y, test_x, test_y, 10)

    assert top1(1.0) > 0.8
    assert top1(1e-6) <= one_class + 1e-6


def test_finetuning_is_deterministic(digits) -> None:
    train_x, train_y, test_x, test_y = digits
    cfg = _cfg("eval.finetune_epochs=1", "eval.finetune_backbone_lr_scale=1.0")
    state = _random_init(cfg)
    torch.manual_seed(123)  # the caller's global RNG state must not matter
    first = finetune(cfg, state, train_x, train_y, test_x, test_y, 10)
    torch.manual_seed(456)
    assert finetune(cfg, state, train_x, train_y, test_x, test_y, 10) == first
