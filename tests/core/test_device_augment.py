"""sslcore.device_augment: batched views on the training device, checked against torchvision's per-image
recipes (shapes and order per method, the numbers read from the recipe) and torchvision's functional kernels
(colour ops, blur, resized crop, crop-box distribution)."""

from __future__ import annotations

import colorsys
import math
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2

from sslcore import device_augment
from sslcore.config import AugmentConfig, load_config
from sslcore.device_augment import (
    BatchViewAugment,
    ViewRecipe,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    decode_for_device,
    device_views,
    gaussian_blur,
    resized_crop,
    rgb_to_grayscale,
    sample_crop_boxes,
    view_recipe,
)
from sslcore.method_config import DINOConfig
from sslcore.methods import as_method, build_method
from sslcore.methods.dino import distillation_views
from sslcore.transforms import MultiView, minimal_transform, pil_to_array, preprocess, view_transform

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size): smooth colour gradients plus noise, so crops, flips and colour ops all show."""
    g = torch.Generator().manual_seed(seed)
    across, down = torch.linspace(0, 1, size).view(1, -1).expand(size, size), torch.linspace(0, 1, size).view(-1, 1)
    base = torch.stack([across, down.expand(size, size), 1 - across])
    x = base * torch.rand(n, 3, 1, 1, generator=g) + 0.3 * torch.rand(n, 3, size, size, generator=g)
    return (x / x.amax(dim=(1, 2, 3), keepdim=True) * 255).round().to(torch.uint8)


def floats(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return images(n, size, seed).float() / 255


def normalize(x: torch.Tensor, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> torch.Tensor:
    return (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def whole(size: int = 16, **steps: Any) -> ViewRecipe:
    """A recipe whose crop is always the whole image, with only ``steps`` on."""
    return ViewRecipe(size=(size, size), scale=(1.0, 1.0), ratio=(1.0, 1.0), **steps)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- loader side


def test_decode_for_device_is_picklable_uint8_and_matches_preprocess() -> None:
    decode = pickle.loads(pickle.dumps(decode_for_device(16)))
    rng = np.random.default_rng(0)
    for shape in [(40, 30, 3), (16, 16, 3), (9, 20)]:
        image = Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8))
        x = decode(image)
        assert x.shape == (3, 16, 16) and x.dtype == torch.uint8
        expected = preprocess(pil_to_array(image)[None].copy(), 16, MEAN, STD)
        torch.testing.assert_close(normalize(x[None]), expected, atol=0.5 / 255 / min(STD) + 1e-6, rtol=0)
        if shape[:2] == (16, 16):  # no resize: exactly the image's pixels
            assert torch.equal(x, torch.from_numpy(pil_to_array(image).copy()).permute(2, 0, 1))


# --------------------------------------------------------------------------- views per method


def test_multiview_gives_n_views_of_the_recipe_size() -> None:
    views = device_views(MultiView(view_transform(AugmentConfig(blur_p=0.5), 16), 3))
    assert views.max_size == 16
    out = views(images(5, 24), seeded())
    assert len(out) == 3
    assert all(v.shape == (5, 3, 16, 16) and v.dtype == torch.float32 and torch.isfinite(v).all() for v in out)
    assert not torch.equal(out[0], out[1])


def test_multicrop_reads_dino_views_in_order() -> None:
    cfg, augment = DINOConfig(num_local_crops=3, local_crop_size=8), AugmentConfig()
    views = device_views(distillation_views(cfg, augment, 16))
    globals_, locals_ = views.recipes
    assert views.counts == [2, 3] and views.max_size == 16
    assert (globals_.size, globals_.scale) == ((16, 16), cfg.global_crop_scale)
    assert (locals_.size, locals_.scale) == ((8, 8), cfg.local_crop_scale)
    out = views(images(4, 16), seeded())
    assert [v.shape for v in out] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)] * 3


@pytest.mark.parametrize("name", ["dino", "mae", "simclr"])
def test_device_views_feed_the_built_method(name: str) -> None:
    """Same number, order and shapes as the per-image transform collated by the loader; forward accepts them."""
    cfg = load_config(
        None, [f"method.name={name}", "model.backbone=test_vit", "model.image_size=16", "model.patch_size=4"]
    )
    torch.manual_seed(0)
    method = build_method(cfg)
    transform = as_method(method).view_transform(cfg.augment, cfg.model.image_size)
    per_image = transform(Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)))
    views = device_views(transform)
    out = views(images(3, views.max_size), seeded())
    assert [v.shape[1:] for v in out] == [v.shape for v in per_image]
    assert torch.isfinite(method(out)["loss"])


def test_minimal_transform_has_no_colour_steps() -> None:
    recipe = view_recipe(minimal_transform(AugmentConfig(hflip_p=0.5, blur_p=1.0), 16, (0.2, 1.0)))
    assert (recipe.size, recipe.scale, recipe.hflip_p, recipe.mean, recipe.std) == (
        (16, 16),
        (0.2, 1.0),
        0.5,
        MEAN,
        STD,
    )
    assert recipe.jitter_p == recipe.grayscale_p == recipe.blur_p == 0.0
    out = device_views(MultiView(minimal_transform(AugmentConfig(), 16, (0.2, 1.0)), 1))(images(2), seeded())
    assert len(out) == 1 and out[0].shape == (2, 3, 16, 16)


def test_recipe_carries_the_config_numbers() -> None:
    cfg = AugmentConfig(
        crop_scale=(0.25, 0.9), hflip_p=0.3, color_jitter_p=0.7, brightness=0.3, contrast=0.0, saturation=0.2,
        hue=0.05, grayscale_p=0.1, blur_p=0.4, mean=(0.5, 0.5, 0.5), std=(0.2, 0.3, 0.4),
    )  # fmt: skip
    recipe = view_recipe(view_transform(cfg, 24))
    assert recipe.size == (24, 24) and recipe.scale == (0.25, 0.9)
    assert recipe.ratio == pytest.approx((3 / 4, 4 / 3))
    assert (recipe.hflip_p, recipe.jitter_p, recipe.grayscale_p, recipe.blur_p) == (0.3, 0.7, 0.1, 0.4)
    assert recipe.brightness == pytest.approx((0.7, 1.3)) and recipe.contrast is None
    assert recipe.saturation == pytest.approx((0.8, 1.2)) and recipe.hue == pytest.approx((-0.05, 0.05))
    assert recipe.blur_kernel == (3, 3) and recipe.blur_sigma == (0.1, 2.0)
    assert (recipe.mean, recipe.std) == ((0.5, 0.5, 0.5), (0.2, 0.3, 0.4))


@pytest.mark.parametrize(
    ("steps", "named"),
    [
        ([v2.RandomResizedCrop(8), v2.RandomRotation(10)], "RandomRotation"),
        ([v2.RandomResizedCrop(8), v2.RandomApply([v2.RandomGrayscale()], p=0.5)], "RandomGrayscale"),
        ([v2.RandomResizedCrop(8), v2.RandomApply([v2.ColorJitter(0.1), v2.RandomGrayscale()])], "ColorJitter"),
        ([v2.RandomResizedCrop(8, interpolation=v2.InterpolationMode.NEAREST)], "NEAREST"),
        ([v2.RandomResizedCrop(8), v2.ToDtype(torch.float32, scale=False)], "ToDtype"),
        ([v2.RandomGrayscale(), v2.RandomHorizontalFlip()], "RandomHorizontalFlip after RandomGrayscale"),
        ([v2.RandomHorizontalFlip()], "no RandomResizedCrop"),
    ],
)
def test_untranslatable_recipes_raise_naming_the_step(steps: list[v2.Transform], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        device_views(MultiView(v2.Compose(steps), 2))


def test_unknown_view_producer_raises() -> None:
    with pytest.raises(ValueError, match="function"):
        device_views(lambda image: [image])


# --------------------------------------------------------------------------- behaviour of the module


def test_same_seed_same_views_other_seed_other_views() -> None:
    views = device_views(distillation_views(DINOConfig(), AugmentConfig(hflip_p=0.5, blur_p=0.5), 16))
    x = images(6)
    a, b, c = views(x, seeded(1)), views(x, seeded(1)), views(x, seeded(2))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not any(torch.equal(u, v) for u, v in zip(a, c, strict=True))
    torch.manual_seed(3)
    d = views(x)  # no generator: the global RNG
    torch.manual_seed(3)
    assert all(torch.equal(u, v) for u, v in zip(d, views(x), strict=True))


def test_all_steps_off_is_normalize_and_matches_torchvision_end_to_end() -> None:
    x = images(3)
    identity = BatchViewAugment(whole(mean=MEAN, std=STD))
    torch.testing.assert_close(identity(x), normalize(x))
    torch.testing.assert_close(identity(x.float() / 255), normalize(x))  # float input in [0, 1]
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), hflip_p=0.0, color_jitter_p=0.0, grayscale_p=0.0)
    image = Image.fromarray(x[0].permute(1, 2, 0).numpy())
    (view,) = device_views(view_transform(cfg, 16))(decode_for_device(16)(image)[None])
    torch.testing.assert_close(view[0], view_transform(cfg, 16)(image))


def test_flip_p1_is_torch_flip_and_gray_p1_uses_torchvision_luma() -> None:
    x = images(3)
    flip = BatchViewAugment(whole(hflip_p=1.0))
    torch.testing.assert_close(flip(x), torch.flip(x.float() / 255, dims=[-1]))
    gray = BatchViewAugment(whole(grayscale_p=1.0))(x)
    r, g, b = (x.float() / 255).unbind(1)
    torch.testing.assert_close(gray, (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1).expand(-1, 3, -1, -1))
    torch.testing.assert_close(gray, TF.rgb_to_grayscale(x.float() / 255, num_output_channels=3))


@pytest.mark.parametrize(
    ("ours", "theirs", "factors"),
    [
        (adjust_brightness, TF.adjust_brightness, [0.0, 0.6, 1.0, 1.4, 2.5]),
        (adjust_contrast, TF.adjust_contrast, [0.0, 0.6, 1.0, 1.4, 2.5]),
        (adjust_saturation, TF.adjust_saturation, [0.0, 0.6, 1.0, 1.4, 2.5]),
        (adjust_hue, TF.adjust_hue, [-0.5, -0.1, 0.0, 0.07, 0.5]),
    ],
)
def test_colour_kernels_match_torchvision_per_sample(
    ours: Kernel, theirs: Callable[..., Any], factors: list[float]
) -> None:
    x = floats(len(factors))
    x[0, :, :4] = x[0, :1, :4]  # gray pixels
    x[1, :, :4] = 1.0  # saturated white
    expected = torch.stack([theirs(x[i], f) for i, f in enumerate(factors)])
    torch.testing.assert_close(ours(x, torch.tensor(factors)), expected, atol=2e-6, rtol=0)


def test_color_jitter_follows_each_samples_order() -> None:
    n = 8
    x = floats(n)
    factors = torch.tensor([[1.3, 0.7, 1.4, 0.08]]).expand(n, 4).clone()
    factors[3] = torch.tensor([1.0, 1.0, 1.0, 0.0])  # jitter not applied: unchanged
    order = torch.stack([torch.randperm(4, generator=seeded(i)) for i in range(n)])
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    expected = []
    for i in range(n):
        y = x[i]
        for op in order[i].tolist():
            y = ops[op](y, float(factors[i, op]))
        expected.append(y)
    out = color_jitter(x, factors, order)
    torch.testing.assert_close(out, torch.stack(expected), atol=2e-6, rtol=0)
    assert torch.equal(out[3], x[3])
    assert not torch.allclose(out, color_jitter(x, factors, None), atol=1e-3)  # the order matters


def test_jitter_order_is_a_uniform_random_permutation_per_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor | None] = []

    def spy(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        seen.append(order)
        return color_jitter(x, factors, order)

    monkeypatch.setattr(device_augment, "color_jitter", spy)
    recipe = ViewRecipe(size=(4, 4), jitter_p=1.0, brightness=(0.6, 1.4), hue=(-0.1, 0.1))
    x = images(2400, 4)
    BatchViewAugment(recipe)(x, generator=seeded())
    BatchViewAugment(recipe, random_jitter_order=False)(x, generator=seeded())
    order, fixed = seen
    assert fixed is None and order is not None
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(2400, 4))
    counts = torch.unique(order, dim=0, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 100 - 4 * math.sqrt(100)  # 2400 / 24 = 100 each


def test_gaussian_blur_matches_torchvision_per_sigma_and_zero_sigma_is_identity() -> None:
    sigmas = [0.1, 0.5, 1.0, 2.0]
    x = floats(len(sigmas) + 1)
    out = gaussian_blur(x, torch.tensor([*sigmas, 0.0]), (5, 3))
    expected = torch.stack([TF.gaussian_blur(x[i], [5, 3], [s, s]) for i, s in enumerate(sigmas)])
    torch.testing.assert_close(out[:-1], expected, atol=1e-6, rtol=0)
    assert torch.equal(out[-1], x[-1])


def test_resized_crop_is_torchvision_antialiased_bilinear() -> None:
    """Up- and downscaling boxes, two views per image (view-major rows), against torchvision's crop-then-resize."""
    x = floats(2, 16)
    boxes = [(3, 2, 8, 12), (0, 0, 16, 16), (1, 0, 15, 9), (5, 4, 11, 12)]  # (top, left, h, w)
    for size in [(24, 24), (8, 8), (10, 6)]:
        out = resized_crop(x, torch.tensor(boxes, dtype=torch.float32), size)
        expected = torch.stack(
            [TF.resized_crop(x[i % 2], *box, list(size), antialias=True) for i, box in enumerate(boxes)]
        )
        assert out.shape == (4, 3, *size)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("height", "width", "scale"), [(32, 32, (0.08, 1.0)), (32, 32, (0.3, 1.0)), (20, 40, (0.2, 0.4))]
)
def test_crop_boxes_are_distributed_like_torchvision(height: int, width: int, scale: tuple[float, float]) -> None:
    n, ratio = 3000, (3 / 4, 4 / 3)
    ours = sample_crop_boxes(n, height, width, scale, ratio, generator=seeded())
    torch.manual_seed(0)
    img = torch.empty(3, height, width)
    theirs = torch.tensor([T.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)]).float()
    top, left, h, w = ours.unbind(1)
    assert ((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width) & (h > 0) & (w > 0)).all()
    assert torch.equal(ours, ours.round())
    area = h * w / (height * width)
    lo = scale[0] * (1 - 2 / math.sqrt(scale[0] * height * width))  # w, h are rounded to whole pixels
    hi = scale[1] * (1 + 2 / math.sqrt(scale[1] * height * width))
    assert area.min() >= lo and area.max() <= hi
    assert scale[0] <= area.mean() <= scale[1]
    theirs_area = theirs[:, 2] * theirs[:, 3] / (height * width)
    assert abs(area.mean() - theirs_area.mean()) < 0.02
    assert abs(area.std() - theirs_area.std()) < 0.02
    assert abs((w / h).log().mean() - (theirs[:, 3] / theirs[:, 2]).log().mean()) < 0.02
    centre = torch.stack([top + h / 2, left + w / 2], 1).mean(0)
    assert torch.allclose(centre, torch.tensor([height / 2, width / 2]), atol=0.5)


def test_crop_falls_back_to_torchvisions_central_crop() -> None:
    ours = sample_crop_boxes(5, 16, 16, (1.0, 1.0), (2.0, 3.0), generator=seeded())
    expected = T.RandomResizedCrop.get_params(torch.empty(3, 16, 16), [1.0, 1.0], [2.0, 3.0])
    assert ours.tolist() == [list(map(float, expected))] * 5


def _hue(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3) -> (N,) HSV hue in turns, by the standard library."""
    return torch.tensor([colorsys.rgb_to_hsv(*px)[0] for px in rgb.tolist()])


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_jitter_factors_are_uniform_in_the_recipe_range_with_probability_p(op: str) -> None:
    """Only ``op`` on: its factor is recovered from each output and must be uniform on torchvision's range
    (Kolmogorov-Smirnov, 0.1% level) for a share ``p`` of the samples, the neutral value for the rest."""
    n, p, span = 3000, 0.8, {"brightness": (0.6, 1.4), "contrast": (0.5, 1.3), "saturation": (0.7, 1.5)}
    lo, hi = span.get(op, (-0.1, 0.1))
    x = torch.zeros(1, 3, 2, 2)
    x[..., 0, :] = torch.tensor([0.6, 0.4, 0.4]).view(3, 1)  # a reddish row, hue 0
    x[..., 1, :] = torch.tensor([0.2, 0.2, 0.2]).view(3, 1)  # a dark gray row
    recipe = whole(2, jitter_p=p, **{op: (lo, hi)})
    y = BatchViewAugment(recipe)(x.expand(n, -1, -1, -1), generator=seeded())
    red, dark = y[:, :, 0, 0], y[:, :, 1, 0]
    if op == "brightness":
        factor = dark[:, 0] / 0.2
    elif op == "contrast":  # both rows move away from the gray mean by the factor
        factor = (red - dark)[:, 1] / (x[0, 1, 0, 0] - x[0, 1, 1, 0])
    elif op == "saturation":  # red - green is the chroma, scaled by the factor
        factor = (red[:, 0] - red[:, 1]) / 0.2
    else:
        factor = (_hue(red) + 0.5) % 1.0 - 0.5
    neutral = 0.0 if op == "hue" else 1.0
    jittered = (factor - neutral).abs() > 1e-5
    assert abs(jittered.float().mean() - p) < 4 * math.sqrt(p * (1 - p) / n)
    f = factor[jittered].sort().values
    assert lo - 1e-4 <= f[0] < lo + 0.01 and hi - 0.01 < f[-1] <= hi + 1e-4
    uniform = (f - lo) / (hi - lo)
    ranks = torch.arange(1, len(f) + 1) / len(f)
    assert (uniform - ranks).abs().max() < 1.95 / math.sqrt(len(f))


def test_random_parameters_differ_per_sample() -> None:
    """One image repeated: every view differs, and each coin has the recipe's probability per sample."""
    x = images(1).expand(256, -1, -1, -1)
    cfg = AugmentConfig(color_jitter_p=1.0, grayscale_p=0.0, blur_p=1.0)
    out = device_views(view_transform(cfg, 16))(x, seeded())[0].flatten(1)
    assert torch.cdist(out, out).add(torch.eye(256) * 1e3).min() > 1e-3

    n, p = 4000, 0.3
    x = images(1).expand(n, -1, -1, -1)
    flip = BatchViewAugment(whole(hflip_p=p))(x, generator=seeded())
    flipped = (flip - torch.flip(x.float() / 255, dims=[-1])).flatten(1).abs().amax(1) < 1e-6
    gray = BatchViewAugment(whole(grayscale_p=p))(x, generator=seeded())
    grayed = (gray[:, 0] == gray[:, 1]).flatten(1).all(1)
    tol = 4 * math.sqrt(p * (1 - p) / n)
    assert abs(flipped.float().mean() - p) < tol and abs(grayed.float().mean() - p) < tol


def view_statistics(views: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) normalised views -> (N, 7): per-channel mean and std, and mean chroma (max - min channel)."""
    x = views * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    chroma = (x.amax(dim=1) - x.amin(dim=1)).mean(dim=(1, 2))
    return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), chroma.unsqueeze(1)], dim=1)


def assert_same_distribution(ours: torch.Tensor, theirs: torch.Tensor, sigmas: float = 5.0) -> None:
    """Means and spreads of (N, K) samples agree within ``sigmas`` standard errors."""
    n = ours.shape[0]
    mean_a, mean_b, sd_a, sd_b = ours.mean(0), theirs.mean(0), ours.std(0), theirs.std(0)
    mean_se = ((sd_a**2 + sd_b**2) / n).sqrt()
    sd_se = ((sd_a**2 + sd_b**2) / (2 * n)).sqrt()
    assert ((mean_a - mean_b).abs() < sigmas * mean_se + 1e-4).all(), (mean_a - mean_b) / mean_se
    assert ((sd_a - sd_b).abs() < sigmas * sd_se + 1e-4).all(), (sd_a - sd_b) / sd_se


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(crop_scale=(0.2, 1.0), hflip_p=0.5, blur_p=0.5),
        AugmentConfig(crop_scale=(1.0, 1.0), color_jitter_p=1.0, grayscale_p=0.0),  # jitter alone
    ],
)
def test_views_are_distributed_like_torchvisions_per_image_views(cfg: AugmentConfig) -> None:
    """The same recipe per image (torchvision, on a float tensor so both sides use the same kernels) and
    batched: the distributions of per-view statistics agree, so ranges, probabilities and scales carried over."""
    n, x = 1000, images(1, 24, seed=3)
    transform = view_transform(cfg, 16)
    torch.manual_seed(0)
    theirs = torch.stack([transform(x[0].float() / 255) for _ in range(n)])
    ours = device_views(transform)(x.expand(n, -1, -1, -1), seeded())[0]
    assert_same_distribution(view_statistics(ours), view_statistics(theirs))


def test_rgb_to_grayscale_shape() -> None:
    assert rgb_to_grayscale(floats(2)).shape == (2, 1, 16, 16)
