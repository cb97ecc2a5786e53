"""End-to-end fine-tuning: the pretrained backbone plus a linear head, trained on labels with a
lower learning rate for the backbone (as in MAE/BEiT fine-tuning, without their layer decay)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from sslcore.backbones import create_backbone, feature_dim
from sslcore.config import PipelineConfig
from sslcore.evaluation.linear import accuracy
from sslcore.transforms import preprocess


def finetune(
    cfg: PipelineConfig,
    backbone_state: dict[str, Tensor],
    train_images: np.ndarray,
    train_labels: Tensor,
    test_images: np.ndarray,
    test_labels: Tensor,
    num_classes: int,
    device: str = "cpu",
) -> float:
    """Top-1 on the test split after ``cfg.eval.finetune_epochs`` epochs of supervised training."""
    ev = cfg.eval
    gen = torch.Generator().manual_seed(ev.seed)
    torch.manual_seed(ev.seed)
    backbone = create_backbone(cfg.model)
    backbone.load_state_dict(backbone_state)
    model = nn.Sequential(backbone, nn.Linear(feature_dim(backbone), num_classes)).to(device)
    head_lr = ev.finetune_lr
    opt = torch.optim.AdamW(
        [
            {"params": backbone.parameters(), "lr": head_lr * ev.finetune_backbone_lr_scale},
            {"params": model[1].parameters(), "lr": head_lr},
        ],
        weight_decay=0.05,
    )
    size = cfg.model.image_size
    train_x = preprocess(train_images, size, cfg.augment.mean, cfg.augment.std)
    test_x = preprocess(test_images, size, cfg.augment.mean, cfg.augment.std)
    augment = v2.Compose([v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
                          v2.RandomHorizontalFlip(p=cfg.augment.hflip_p)])  # fmt: skip
    batch = min(ev.batch_size, len(train_x))
    steps = ev.finetune_epochs * max(1, len(train_x) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(ev.finetune_epochs):
        order = torch.randperm(len(train_x), generator=gen)
        for start in range(0, len(train_x) - batch + 1, batch):
            idx = order[start : start + batch]
            x = torch.stack([augment(img) for img in train_x[idx]]).to(device)
            loss = F.cross_entropy(model(x), train_labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat(
            [model(test_x[i : i + ev.batch_size].to(device)).cpu() for i in range(0, len(test_x), ev.batch_size)]
        )
    return accuracy(logits, test_labels)[0]
