"""sslcore.inference: uint8 images in, float32 embeddings out, rebuilt from a spec and weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sslcore.backbones import create_backbone, feature_dim
from sslcore.config import ModelConfig
from sslcore.inference import Encoder, EncoderSpec, spec_for
from sslcore.transforms import preprocess

MODEL = ModelConfig(backbone="test_resnet", image_size=16)
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def trained_state() -> dict[str, torch.Tensor]:
    """Backbone weights with non-default BN statistics, as after training."""
    torch.manual_seed(0)
    backbone = create_backbone(MODEL)
    with torch.no_grad():
        for _ in range(3):
            backbone(torch.randn(8, 3, 16, 16) * 2 + 1)  # train mode: moves the running stats
    return {k: v.clone() for k, v in backbone.state_dict().items()}


@pytest.fixture(scope="module")
def encoder(trained_state: dict[str, torch.Tensor]) -> Encoder:
    return Encoder.load_from_state(spec_for(MODEL, MEAN, STD), trained_state)


def _images(n: int, h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def test_spec_records_the_embedding_width(encoder: Encoder) -> None:
    assert encoder.spec.embedding_dim == feature_dim(encoder.backbone) == 96
    assert (encoder.spec.mean, encoder.spec.std, encoder.spec.model) == (MEAN, STD, MODEL)


@pytest.mark.parametrize(("h", "w"), [(8, 8), (16, 16), (20, 12), (33, 47)])
@pytest.mark.parametrize("channels", [1, 3])
def test_embed_shapes_and_dtype(encoder: Encoder, h: int, w: int, channels: int) -> None:
    out = encoder.embed(_images(5, h, w, channels))
    assert out.shape == (5, 96)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


def test_embed_is_the_backbone_on_preprocessed_input(encoder: Encoder) -> None:
    images = _images(6, 20, 12, 3)
    with torch.no_grad():
        expected = encoder.backbone(preprocess(images, 16, MEAN, STD)).numpy()
    np.testing.assert_allclose(encoder.embed(images), expected, rtol=1e-5, atol=1e-6)


def test_gray_equals_replicated_rgb(encoder: Encoder) -> None:
    gray = _images(4, 12, 12, 1)
    np.testing.assert_array_equal(encoder.embed(gray), encoder.embed(np.repeat(gray, 3, axis=-1)))


def test_batching_does_not_change_embeddings(encoder: Encoder) -> None:
    images = _images(7, 16, 16, 3)
    np.testing.assert_allclose(encoder.embed(images, batch_size=3), encoder.embed(images), rtol=1e-5, atol=1e-6)


def test_single_image_and_empty_batch(encoder: Encoder) -> None:
    images = _images(2, 16, 16, 3)
    np.testing.assert_allclose(encoder.embed(images[0]), encoder.embed(images)[:1], rtol=1e-5, atol=1e-6)
    empty = encoder.embed(np.zeros((0, 16, 16, 3), dtype=np.uint8))
    assert empty.shape == (0, 96) and empty.dtype == np.float32


def test_load_from_files_gives_identical_embeddings(
    tmp_path: Path, encoder: Encoder, trained_state: dict[str, torch.Tensor]
) -> None:
    spec_path, weights_path = tmp_path / "encoder.json", tmp_path / "weights.safetensors"
    spec_path.write_text(encoder.spec.model_dump_json())
    save_file({k: v.contiguous() for k, v in trained_state.items()}, str(weights_path))
    loaded = Encoder.load(spec_path, weights_path, device="cpu")
    assert loaded.spec == encoder.spec
    images = _images(5, 24, 24, 1)
    np.testing.assert_array_equal(loaded.embed(images), encoder.embed(images))


def test_load_rejects_weights_of_another_model(tmp_path: Path, encoder: Encoder) -> None:
    spec_path, weights_path = tmp_path / "encoder.json", tmp_path / "weights.safetensors"
    spec_path.write_text(encoder.spec.model_dump_json())
    save_file({"foo.weight": torch.zeros(2, 2)}, str(weights_path))
    with pytest.raises(RuntimeError, match="state_dict"):
        Encoder.load(spec_path, weights_path, device="cpu")


def test_backbone_stays_in_eval_mode(trained_state: dict[str, torch.Tensor]) -> None:
    backbone = create_backbone(MODEL)
    backbone.load_state_dict(trained_state)
    backbone.train()
    enc = Encoder(backbone, EncoderSpec(model=MODEL, mean=MEAN, std=STD, embedding_dim=96))
    assert not enc.backbone.training
    bn_stats = {
        name: (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
        for name, m in enc.backbone.named_modules()
        if isinstance(m, nn.BatchNorm2d)
    }
    first = enc.embed(_images(4, 16, 16, 3))
    second = enc.embed(_images(4, 16, 16, 3))
    np.testing.assert_array_equal(first, second)
    for name, m in enc.backbone.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            mean, var, tracked = bn_stats[name]
            assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
            assert int(m.num_batches_tracked) == tracked
    assert not enc.backbone.training
