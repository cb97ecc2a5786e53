"""MAE and BEiT-style: masks (ratio, blocks), the encoder's inputs, the loss's support, the
teacher's targets; the ViT token helpers they are built on."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import timm
import torch

from sslcore.config import load_config
from sslcore.losses import feature_regression_loss, layer_average_targets, mae_loss, patchify
from sslcore.methods import build_method
from sslcore.nn.masking import block_mask, block_masks, random_masking
from sslcore.nn.vit import embed_patches, features, forward_tokens, patch_tokens, pooled

TINY = ["model.backbone=test_vit", "model.image_size=16", "model.patch_size=4"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest, and steadiest on a shared CPU, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("patches", "ratio"), [(16, 0.75), (196, 0.75), (49, 0.5), (10, 0.0), (7, 0.9)])
def test_random_masking_masks_exactly_the_configured_share(patches: int, ratio: float) -> None:
    torch.manual_seed(0)
    ids_keep, mask = random_masking(5, patches, ratio, torch.device("cpu"))
    keep = int(patches * (1 - ratio))
    assert ids_keep.shape == (5, keep) and mask.shape == (5, patches)
    assert (mask.sum(dim=1) == patches - keep).all()
    assert (~mask).gather(1, ids_keep).all()  # the kept ones are the unmasked ones
    assert (ids_keep.diff(dim=1) > 0).all()  # in increasing (spatial) order
    if 0 < keep < patches:
        assert len({tuple(m.tolist()) for m in mask}) > 1  # per-sample masks


def test_block_masks_are_made_of_blocks() -> None:
    """Blocks of at least 4 patches: masked patches have masked 4-neighbours (only the last,
    smaller-than-min_block top-up may add an isolated one, as in BEiT's generator)."""
    for seed in range(30):
        mask = block_mask(8, 8, 20, min_block=4, rng=random.Random(seed))
        padded = torch.nn.functional.pad(mask.float(), (1, 1, 1, 1))
        neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
        assert 0 < int(mask.sum()) <= 20
        assert int((neighbours[mask] == 0).sum()) <= 1


@pytest.mark.parametrize(("grid", "ratio", "min_block"), [((4, 4), 0.4, 2), ((14, 14), 0.4, 16), ((8, 8), 0.5, 4)])
def test_block_masks_never_exceed_the_target(grid: tuple[int, int], ratio: float, min_block: int) -> None:
    torch.manual_seed(0)
    masks = block_masks(64, grid, (ratio, ratio), min_block=min_block)
    target = int(grid[0] * grid[1] * ratio)
    counts = masks.sum(dim=1)
    assert (counts <= target).all() and (counts > 0).all()
    assert (counts == target).float().mean() > 0.5  # BEiT's generator usually reaches it exactly


def test_block_masks_probability_and_determinism() -> None:
    torch.manual_seed(3)
    a = block_masks(200, (4, 4), (0.1, 0.5), probability=0.5, min_block=2)
    torch.manual_seed(3)
    b = block_masks(200, (4, 4), (0.1, 0.5), probability=0.5, min_block=2)
    assert torch.equal(a, b)
    masked_images = (a.sum(dim=1) > 0).float().mean().item()
    assert 0.35 < masked_images < 0.65


@pytest.mark.parametrize(("name", "kwargs"), [("vit_tiny_patch16_224", {}), ("test_vit", {}), ("test_vit2", {})])
def test_vit_token_path_equals_forward_features(name: str, kwargs: dict[str, object]) -> None:
    vit = timm.create_model(name, num_classes=0, img_size=16, patch_size=4, **kwargs).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens = forward_tokens(vit, x)
        torch.testing.assert_close(tokens, vit.forward_features(x))
        torch.testing.assert_close(pooled(vit, tokens), vit(x))
        small = features(vit, torch.randn(2, 3, 8, 8))  # 2x2 patches, resampled position embeddings
    assert small.shape == (2, vit.num_features)


def test_mask_token_replaces_masked_patches_before_position_embeddings() -> None:
    vit = timm.create_model("test_vit", num_classes=0, img_size=16, patch_size=4)
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 3] = True
    token = torch.randn(1, 1, vit.embed_dim)
    with torch.no_grad():
        plain, _ = embed_patches(vit, x)
        masked, _ = embed_patches(vit, x, mask, token)
    torch.testing.assert_close(masked[~mask], plain[~mask])
    torch.testing.assert_close(masked[0, 3], token[0, 0] + vit.pos_embed[0, 1 + 3])


def _mae(*extra: str) -> torch.nn.Module:
    cfg = load_config(None, ["method.name=mae", *TINY, "method.decoder_dim=16", "method.decoder_depth=1", *extra])
    torch.manual_seed(0)
    return build_method(cfg)


def test_mae_encoder_sees_only_the_visible_patches() -> None:
    model = _mae("method.mask_ratio=0.75")
    lengths: list[int] = []
    hook = model.backbone.blocks[0].register_forward_hook(lambda m, i, o: lengths.append(i[0].shape[1]))
    model([torch.randn(3, 3, 16, 16)])
    hook.remove()
    assert lengths == [model.backbone.num_prefix_tokens + 4]  # 16 patches, 25% visible


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_loss_is_the_masked_mse_and_ignores_visible_patches(norm_pix: bool) -> None:
    model = _mae(f"method.norm_pix_loss={str(norm_pix).lower()}").eval()
    x = torch.randn(3, 3, 16, 16)
    predictions: list[torch.Tensor] = []
    hook = model.decoder.pred.register_forward_hook(lambda m, i, o: predictions.append(o))
    torch.manual_seed(7)
    loss = model([x])["loss"]
    torch.manual_seed(7)  # the same RNG draws give the same mask
    _, mask = random_masking(3, 16, 0.75, x.device)
    torch.testing.assert_close(loss, mae_loss(predictions[0], patchify(x, 4), mask, norm_pix=norm_pix))
    hook.remove()

    def scramble_visible(module: torch.nn.Module, inputs: tuple[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.unsqueeze(-1), out, torch.full_like(out, 1e4))

    model.decoder.pred.register_forward_hook(scramble_visible)
    torch.manual_seed(7)
    torch.testing.assert_close(model([x])["loss"], loss)


def _beit(*extra: str) -> torch.nn.Module:
    cfg = load_config(None, ["method.name=beit", *TINY, "method.target_layers=3", *extra])
    torch.manual_seed(0)
    return build_method(cfg)


def test_beit_targets_are_the_teachers_top_blocks_on_the_unmasked_image() -> None:
    model = _beit().eval()
    x = torch.randn(2, 3, 16, 16)
    outputs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in model.teacher_backbone.blocks]
    with torch.no_grad():
        model.teacher_backbone.forward_features(x)  # an ordinary, unmasked forward
        layers = model._teacher_layers(x)
    for h in hooks:
        h.remove()
    prefix = model.backbone.num_prefix_tokens
    depth = len(model.teacher_backbone.blocks)
    expected = [o[:, prefix:] for o in outputs[depth - 3 : depth]]  # the first forward's top 3 blocks
    assert len(layers) == 3
    for got, want in zip(layers, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_beit_loss_regresses_masked_patches_only() -> None:
    model = _beit("method.mask_ratio=0.4").eval()
    x = torch.randn(4, 3, 16, 16)
    torch.manual_seed(11)
    out = model([x])
    torch.manual_seed(11)
    masks = block_masks(4, (4, 4), (0.4, 0.4), min_block=model.cfg.min_block_patches, min_aspect=model.cfg.min_aspect)
    assert out["masked_share"].item() == pytest.approx(masks.float().mean().item())
    with torch.no_grad():
        targets = layer_average_targets(model._teacher_layers(x))[masks]
        tokens = forward_tokens(model.backbone, x, masks, model.mask_token)
        prediction = model.prediction_head(patch_tokens(model.backbone, tokens)[masks])
    torch.testing.assert_close(out["loss"], feature_regression_loss(prediction, targets, beta=model.cfg.loss_beta))
