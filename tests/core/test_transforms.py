"""sslcore.transforms: random training views and the deterministic ``preprocess`` used everywhere else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sslcore.config import AugmentConfig
from sslcore.transforms import MultiView, pil_to_array, preprocess, view_transform

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    return Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8))


def _normalised(value: float) -> torch.Tensor:
    """What a constant image of ``value`` (0-1) becomes after normalisation, per channel (3, 1, 1)."""
    return ((value - torch.tensor(MEAN)) / torch.tensor(STD)).view(3, 1, 1)


@pytest.mark.parametrize("blur_p", [0.0, 1.0])
@pytest.mark.parametrize(("width", "height"), [(40, 30), (8, 8), (16, 64)])
def test_view_transform_shape_and_dtype(width: int, height: int, blur_p: float) -> None:
    torch.manual_seed(0)
    view = view_transform(AugmentConfig(blur_p=blur_p), 16)(noise_image(width, height))
    assert view.shape == (3, 16, 16)
    assert view.dtype == torch.float32
    assert torch.isfinite(view).all()


def test_view_without_augmentation_matches_preprocess() -> None:
    """With every random step switched off, a training view of an S x S image is exactly the
    evaluation preprocessing: the two code paths normalise identically."""
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), hflip_p=0.0, color_jitter_p=0.0, grayscale_p=0.0)
    image = noise_image(16, 16, seed=3)
    torch.manual_seed(0)
    view = view_transform(cfg, 16)(image)
    expected = preprocess(pil_to_array(image)[None].copy(), 16, cfg.mean, cfg.std)[0]
    torch.testing.assert_close(view, expected)


def test_multiview_returns_n_different_views() -> None:
    torch.manual_seed(0)
    views = MultiView(view_transform(AugmentConfig(), 16), 3)(noise_image(32, 32))
    assert len(views) == 3
    assert all(v.shape == (3, 16, 16) for v in views)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(views[i], views[j])


@pytest.mark.parametrize(("height", "width"), [(16, 16), (8, 8), (20, 12), (33, 47), (64, 64)])
def test_gray_and_replicated_rgb_preprocess_identically(height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(3, height, width, 1), dtype=np.uint8)
    rgb = np.repeat(gray, 3, axis=-1)
    a, b = preprocess(gray, 16, MEAN, STD), preprocess(rgb, 16, MEAN, STD)
    assert a.shape == (3, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)


def test_constant_image_normalises_per_channel() -> None:
    out = preprocess(np.full((2, 16, 16, 3), 255, dtype=np.uint8), 16, MEAN, STD)
    torch.testing.assert_close(out, _normalised(1.0).expand(2, 3, 16, 16))


def test_non_square_input_is_resized_and_centre_cropped() -> None:
    # 16 x 48: thirds black | white | black. Shorter side is already 16, so the centre crop is the
    # white third.
    image = np.zeros((1, 16, 48, 3), dtype=np.uint8)
    image[:, :, 16:32] = 255
    out = preprocess(image, 16, MEAN, STD)
    assert out.shape == (1, 3, 16, 16)
    torch.testing.assert_close(out[0], _normalised(1.0).expand(3, 16, 16))
    # the same layout, rotated and at another scale, lands on the same crop
    tall = np.zeros((2, 96, 32, 1), dtype=np.uint8)
    tall[:, 32:64] = 255
    out = preprocess(tall, 16, MEAN, STD)
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out[:, :, 4:12, 4:12], _normalised(1.0).expand(2, 3, 8, 8))


def test_preprocess_accepts_tensors() -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(2, 20, 20, 3), dtype=np.uint8)
    assert torch.equal(preprocess(torch.from_numpy(x), 16, MEAN, STD), preprocess(x, 16, MEAN, STD))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 16, 16, 3), dtype=np.float32), "expected dtype uint8"),
        (np.zeros((2, 16, 16, 3), dtype=np.uint16), "expected dtype uint8"),
        (np.zeros((16, 16, 3), dtype=np.uint8), r"\(N, H, W, C\)"),
        (np.zeros((2, 16, 16, 4), dtype=np.uint8), r"\(N, H, W, C\)"),
        (np.zeros((2, 3, 16, 16), dtype=np.uint8), r"\(N, H, W, C\)"),
    ],
)
def test_preprocess_rejects_wrong_dtype_or_shape(images: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preprocess(images, 16, MEAN, STD)


def test_pil_to_array_replicates_gray() -> None:
    gray = noise_image(5, 4, mode="L")
    arr = pil_to_array(gray)
    assert arr.shape == (4, 5, 3) and arr.dtype == np.uint8
    assert (arr == np.asarray(gray)[..., None]).all()
    assert pil_to_array(Image.new("RGBA", (3, 2), (1, 2, 3, 0))).tolist() == [[[1, 2, 3]] * 3] * 2
