"""Augmentations for pretraining views and the deterministic preprocessing used everywhere else.

Training views are built from PIL images with torchvision v2 transforms (SimCLR's recipe, sec. 3
and appendix A of https://arxiv.org/abs/2002.05709). Evaluation, embedding and the registered
model share :func:`preprocess`, which works on uint8 arrays so that serving needs no PIL.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from sslcore.config import AugmentConfig


def view_transform(
    cfg: AugmentConfig, image_size: int, *, crop_scale: tuple[float, float] | None = None
) -> Callable[[Image.Image], Tensor]:
    """One random view: PIL RGB image -> normalised float tensor (3, S, S).

    Args:
        cfg: The augmentations.
        image_size: S, the output side.
        crop_scale: Area range of the random crop; default ``cfg.crop_scale`` (multi-crop methods
            pass their global and local ranges).
    """
    steps: list[Callable[..., object]] = [
        v2.RandomResizedCrop(image_size, scale=crop_scale or cfg.crop_scale, antialias=True),
        v2.RandomHorizontalFlip(p=cfg.hflip_p),
        v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.color_jitter_p),
        v2.RandomGrayscale(p=cfg.grayscale_p),
    ]
    if cfg.blur_p > 0:
        kernel = max(3, (image_size // 10) | 1)
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=cfg.blur_p))
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.mean, cfg.std)]
    compose: Callable[[Image.Image], Tensor] = v2.Compose(steps)
    return compose


class MultiView:
    """``n`` independent random views of one image."""

    def __init__(self, transform: Callable[[Image.Image], Tensor], n: int) -> None:
        self.transform = transform
        self.n = n

    def __call__(self, image: Image.Image) -> list[Tensor]:
        return [self.transform(image) for _ in range(self.n)]


class MultiCrop:
    """Views from several transforms, in order: ``counts[i]`` views from ``transforms[i]``.

    DINO's multi-crop (Caron et al. 2020, https://arxiv.org/abs/2006.09882, sec. 3.2): two global
    views then N smaller local views. The default collate batches each position separately, so
    views of different sizes form a list of (B, 3, S_i, S_i) tensors.
    """

    def __init__(self, transforms: list[Callable[[Image.Image], Tensor]], counts: list[int]) -> None:
        if len(transforms) != len(counts):
            raise ValueError("one count per transform")
        self.transforms = transforms
        self.counts = counts

    def __call__(self, image: Image.Image) -> list[Tensor]:
        return [t(image) for t, n in zip(self.transforms, self.counts, strict=True) for _ in range(n)]


def minimal_transform(
    cfg: AugmentConfig, image_size: int, crop_scale: tuple[float, float]
) -> Callable[[Image.Image], Tensor]:
    """Masked-image-modelling view (MAE, BEiT): random resized crop and ``cfg.hflip_p`` flips only;
    no colour changes."""
    plain = cfg.model_copy(update={"color_jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0})
    return view_transform(plain, image_size, crop_scale=crop_scale)


def preprocess(
    images: np.ndarray | Tensor,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> Tensor:
    """uint8 images (N, H, W, C) with C in {1, 3} -> normalised float (N, 3, S, S).

    The shorter side is resized to ``image_size`` (bilinear, antialiased) and the centre cropped.
    """
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # torch wants writable memory (arrays from PIL images are read-only)
    x = torch.as_tensor(images)
    if x.dim() != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 images shaped (N, H, W, C) with C = 1 or 3, got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected dtype uint8, got {x.dtype}")
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    if (h, w) != (image_size, image_size):
        scale = image_size / min(h, w)
        nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - image_size) // 2, (nw - image_size) // 2
        x = x[..., top : top + image_size, left : left + image_size]
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def pil_to_array(image: Image.Image) -> np.ndarray:
    """PIL image -> uint8 (H, W, 3)."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
