"""DINO and DINOv2: teacher centering and sharpening, center EMA, schedules, last-layer freezing,
gradient clipping, multi-crop wiring; DINOv2's masking and loss terms."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from sslcore.config import load_config
from sslcore.losses import dino_loss, koleo_loss
from sslcore.methods import as_method, build_method, lr_scale
from sslcore.nn.centering import centered_softmax
from sslcore.nn.vit import features
from sslcore.schedules import StepPlan
from sslcore.train import build_optimizer, plan_steps, train_step

CPU = torch.device("cpu")
PLAN = StepPlan(steps_per_epoch=5, total_steps=50, warmup_steps=0, peak_lr=1e-2, final_lr=1e-2, weight_decay=0.04)
SMALL = ["method.hidden_dim=16", "method.bottleneck_dim=8", "method.output_dim=32", "method.num_local_crops=3"]
BACKBONES = {
    "test-resnet": ["model.backbone=test_resnet"],
    "test-vit": ["model.backbone=test_vit", "model.image_size=16", "model.patch_size=4"],
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest, and steadiest on a shared CPU, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(name: str = "dino", backbone: str = "test-vit", *extra: str) -> torch.nn.Module:
    cfg = load_config(None, [f"method.name={name}", *SMALL, *BACKBONES[backbone], *extra])
    torch.manual_seed(0)
    return build_method(cfg)


def _views(batch: int = 6, locals_: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)] + [
        torch.randn(batch, 3, 8, 8, generator=g) for _ in range(locals_)
    ]


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_loss_is_dino_loss_of_centred_teacher_and_center_moves_by_its_ema(backbone: str) -> None:
    model = _model("dino", backbone, "method.center_momentum=0.8").eval()  # eval: repeatable BN
    model.center.center.normal_()
    center_before = model.center.center.clone()
    views = _views()
    values = as_method(model).step_values(3, PLAN)
    with torch.no_grad():
        out = model(views, values)
        teacher = model.teacher_head(model.teacher_backbone(torch.cat(views[:2])))  # globals only
        globals_ = model.head(model.backbone(torch.cat(views[:2])))
        locals_ = model.head(features(model.backbone, torch.cat(views[2:])))  # 8 px: resampled positions
        student = torch.cat([globals_, locals_]).view(5, 6, -1)
        targets = centered_softmax(teacher, center_before, values.teacher_temp).view(2, 6, -1)
        expected = dino_loss(student, targets, student_temp=model.cfg.student_temp)
        features_ = model.backbone(torch.cat(views[:2]))
        koleo = koleo_loss(features_[:6]) + koleo_loss(features_[6:])  # per global crop, as DINOv2
    if backbone == "test-vit":  # KoLeo by default on ViTs only
        torch.testing.assert_close(out["dino_loss"], expected)
        torch.testing.assert_close(out["koleo_loss"], koleo)
        torch.testing.assert_close(out["loss"], expected + 0.1 * koleo)
    else:
        assert "koleo_loss" not in out
        torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(model.center.center, 0.8 * center_before + 0.2 * teacher.mean(dim=0, keepdim=True))


@pytest.mark.parametrize(("backbone", "weight"), [("test-vit", "0"), ("test-resnet", "0.3")])
def test_an_explicit_koleo_weight_holds_on_any_backbone(backbone: str, weight: str) -> None:
    model = _model("dino", backbone, f"method.koleo_loss_weight={weight}").eval()
    with torch.no_grad():
        out = model(_views(), as_method(model).step_values(3, PLAN))
    if weight == "0":
        assert "koleo_loss" not in out
    else:
        torch.testing.assert_close(out["loss"], out["dino_loss"] + 0.3 * out["koleo_loss"])


@pytest.mark.parametrize(
    ("method", "backbone", "extra", "scale"),
    [
        ("dino", "test-vit", [], 0.25),  # the reference ViT lr, 5e-4 per 256 images
        ("dino", "test-vit", ["method.lr_scale=1"], 1.0),
        ("dino", "test-resnet", [], 1.0),
        ("dino", "test-resnet", ["method.lr_scale=0.5"], 0.5),
        ("simclr", "test-vit", [], 1.0),
    ],
)
def test_the_learning_rate_scales_by_method_and_backbone(
    method: str, backbone: str, extra: list[str], scale: float
) -> None:
    cfg = load_config(
        None, [f"method.name={method}", "train.lr=1e-3", "train.batch_size=128", *BACKBONES[backbone], *extra]
    )
    assert lr_scale(cfg) == scale
    assert plan_steps(cfg, 1000).peak_lr == pytest.approx(1e-3 * 128 / 256 * scale)


def test_local_crop_order_does_not_matter() -> None:
    model = _model().eval()
    views = _views()
    with torch.no_grad():
        base = model(views)["loss"]
        model.center.center.zero_()
        swapped = model([views[0], views[1], views[4], views[2], views[3]])["loss"]
    torch.testing.assert_close(swapped, base)


def test_schedules_teacher_temperature_momentum_and_weight_decay() -> None:
    model = _model(
        "dino",
        "test-vit",
        "method.warmup_teacher_temp=0.02",
        "method.teacher_temp=0.06",
        "method.warmup_teacher_temp_epochs=2",
        "method.momentum_start=0.9",
        "method.momentum_end=1.0",
        "method.weight_decay_end=0.4",
    )
    method = as_method(model)
    temps = [method.step_values(s, PLAN).teacher_temp for s in (0, 5, 10, 30)]
    assert temps == pytest.approx([0.02, 0.04, 0.06, 0.06])  # linear over 2 epochs = 10 steps, then held
    assert method.step_values(0, PLAN).momentum == pytest.approx(0.9)
    assert method.step_values(25, PLAN).momentum == pytest.approx(0.95)
    assert method.step_values(50, PLAN).momentum == pytest.approx(1.0)
    assert method.step_values(0, PLAN).weight_decay == pytest.approx(0.04)  # train.weight_decay ...
    assert method.step_values(50, PLAN).weight_decay == pytest.approx(0.4)  # ... to weight_decay_end
    assert method.step_values(7, PLAN).epoch == 1


def test_weight_decay_schedule_reaches_only_the_decaying_group() -> None:
    model = _model("dino", "test-vit", "method.weight_decay_end=0.4")
    cfg_train = load_config(None, ["train.weight_decay=0.04"]).train
    optimizer = build_optimizer(model, cfg_train)
    values = as_method(model).step_values(50, PLAN)
    report = train_step(model, _views(), optimizer, lr=1e-3, device=CPU, values=values)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == pytest.approx(0.4) and no_decay["weight_decay"] == 0.0
    assert report["weight_decay"] == pytest.approx(0.4) and "teacher_temp" in report and "momentum" in report


@pytest.mark.parametrize("name", ["dino", "dinov2"])
def test_last_layer_is_frozen_during_the_first_epoch_only(name: str) -> None:
    model = _model(name, "test-vit", "method.freeze_last_layer_epochs=1", "method.norm_last_layer=false")
    heads = [model.head] if name == "dino" else [model.dino_head, model.ibot_head]
    optimizer = build_optimizer(model, load_config(None).train)
    method = as_method(model)
    before = [h.last_layer.weight_v.clone() for h in heads]
    train_step(model, _views(), optimizer, lr=1e-2, device=CPU, values=method.step_values(4, PLAN))  # epoch 0
    assert all(torch.equal(h.last_layer.weight_v, b) for h, b in zip(heads, before, strict=True))
    train_step(model, _views(seed=1), optimizer, lr=1e-2, device=CPU, values=method.step_values(5, PLAN))  # epoch 1
    assert all(not torch.equal(h.last_layer.weight_v, b) for h, b in zip(heads, before, strict=True))


def test_norm_last_layer_keeps_unit_rows() -> None:
    model = _model("dino", "test-vit", "method.norm_last_layer=true")
    last = model.head.last_layer
    assert not last.weight_g.requires_grad
    weight = last.weight_g * torch.nn.functional.normalize(last.weight_v, dim=1)
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(weight.shape[0]))


def test_gradients_are_clipped_per_parameter() -> None:
    model = _model("dino", "test-resnet", "method.clip_grad=0.01")
    out = model(_views(), as_method(model).step_values(10, PLAN))
    (out["loss"] * 1000).backward()
    as_method(model).before_optimizer_step(as_method(model).step_values(10, PLAN))
    norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    assert norms and max(norms) <= 0.01 * (1 + 1e-4)


def test_dinov2_refuses_a_resnet_and_masks_only_global_crops() -> None:
    from sslcore.config import ConfigError

    with pytest.raises(ConfigError, match="needs a Vision Transformer"):
        _model("dinov2", "test-resnet", "method.ibot_output_dim=32")
    model = _model("dinov2", "test-vit", "method.ibot_output_dim=32", "method.mask_probability=1.0")
    out = model(_views())
    assert 0.1 <= out["masked_share"].item() <= 0.5
    for key in ("dino_loss", "ibot_loss", "koleo_loss"):
        assert torch.isfinite(out[key]) and out[key].item() > 0
    weights = model.cfg
    expected = (
        weights.dino_loss_weight * out["dino_loss"]
        + weights.ibot_loss_weight * out["ibot_loss"]
        + weights.koleo_loss_weight * out["koleo_loss"]
    )
    torch.testing.assert_close(out["loss"].detach(), expected)


def test_dinov2_ema_centers_follow_the_teacher_when_configured() -> None:
    model = _model(
        "dinov2", "test-vit", "method.ibot_output_dim=32", "method.centering=center", "method.mask_probability=1.0"
    ).eval()
    views = _views()
    with torch.no_grad():
        model(views)
        tokens = model.teacher_backbone.forward_features(torch.cat(views[:2]))
        pooled = model.teacher_backbone.forward_head(tokens, pre_logits=True)
    expected = (1 - model.cfg.center_momentum) * model.teacher_dino_head(pooled).mean(dim=0, keepdim=True)
    torch.testing.assert_close(model.dino_center.center, expected)
    assert model.ibot_center.center.abs().sum() > 0
