"""Embedding images with a trained backbone: the code path shared by evaluation and serving.

The registered MLflow model ships ``encoder.json`` (:class:`EncoderSpec`) and the backbone's
``state_dict`` as safetensors; :meth:`Encoder.load` rebuilds it from those two files. :meth:`Encoder.save`
writes them, plus timm's own ``config.json`` where the backbone is a stock timm architecture, so that
timm alone (without this package) rebuilds it and its preprocessing: see :func:`timm_config`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from sslcore.backbones import create_backbone, feature_dim, plain_timm_kwargs
from sslcore.config import ModelConfig
from sslcore.transforms import preprocess

SPEC_FILE = "encoder.json"
WEIGHTS_FILE = "backbone.safetensors"
TIMM_CONFIG_FILE = "config.json"


class EncoderSpec(BaseModel):
    """Everything needed to rebuild the backbone and its preprocessing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelConfig
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int


class Encoder:
    """uint8 images (N, H, W, C), C in {1, 3} -> float32 embeddings (N, D)."""

    def __init__(self, backbone: nn.Module, spec: EncoderSpec, device: str | torch.device = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()

    @classmethod
    def load(cls, spec_path: str | Path, weights_path: str | Path, device: str | None = None) -> Encoder:
        from safetensors.torch import load_file

        spec = EncoderSpec.model_validate(json.loads(Path(spec_path).read_text()))
        backbone = create_backbone(spec.model)
        backbone.load_state_dict(load_file(str(weights_path)))
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(backbone, spec, dev)

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``encoder.json``, ``backbone.safetensors`` and, where timm alone builds the backbone, timm's
        ``config.json`` (:func:`timm_config`) into ``folder``; returns the files written."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        spec_path, weights_path, timm_path = folder / SPEC_FILE, folder / WEIGHTS_FILE, folder / TIMM_CONFIG_FILE
        spec_path.write_text(self.spec.model_dump_json(indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in self.backbone.state_dict().items()}
        save_file(state, str(weights_path))
        config = timm_config(self.spec, self.backbone)
        if config is None:
            timm_path.unlink(missing_ok=True)  # never leave a stale one: timm would build the stock stem
            return [spec_path, weights_path]
        timm_path.write_text(json.dumps(config, indent=2))
        return [spec_path, weights_path, timm_path]

    @classmethod
    def load_from_state(cls, spec: EncoderSpec, state: dict[str, Tensor], device: str = "cpu") -> Encoder:
        """Rebuild from an in-memory ``state_dict``; fills in ``spec.embedding_dim``."""
        backbone = create_backbone(spec.model)
        backbone.load_state_dict(state)
        spec = spec.model_copy(update={"embedding_dim": feature_dim(backbone)})
        return cls(backbone, spec, device)

    @torch.no_grad()
    def embed_tensor(self, x: Tensor) -> Tensor:
        return self.backbone(x.to(self.device)).float().cpu()

    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        if images.ndim == 3:  # a single (H, W, C) image
            images = images[None]
        outs = []
        for start in range(0, len(images), batch_size):
            x = preprocess(
                images[start : start + batch_size], self.spec.model.image_size, self.spec.mean, self.spec.std
            )
            outs.append(self.embed_tensor(x))
        if not outs:
            return np.zeros((0, self.spec.embedding_dim), dtype=np.float32)
        return torch.cat(outs).numpy().astype(np.float32)


def spec_for(model_cfg: ModelConfig, mean: tuple[float, float, float], std: tuple[float, float, float]) -> EncoderSpec:
    return EncoderSpec(model=model_cfg, mean=mean, std=std, embedding_dim=feature_dim(create_backbone(model_cfg)))


def timm_config(spec: EncoderSpec, backbone: nn.Module) -> dict[str, Any] | None:
    """timm's own ``config.json`` for ``backbone`` (built from ``spec.model``), or None where timm alone
    cannot build it (a changed ResNet stem, :func:`sslcore.backbones.stock_timm`).

    It is the format timm's Hugging Face Hub and ``local-dir:`` loaders read: ``architecture`` and
    ``model_args`` rebuild the backbone with ``timm.create_model(architecture, num_classes=0, **model_args)``,
    and ``pretrained_cfg`` holds the preprocessing, for ``timm.data.resolve_data_config``. At the input size it
    is :func:`~sslcore.transforms.preprocess` exactly (resize the shorter side bilinearly, centre crop,
    normalise).
    """
    model_args = plain_timm_kwargs(spec.model, backbone)
    if model_args is None:
        return None
    size = spec.model.image_size
    return {
        "architecture": spec.model.backbone,
        "num_classes": 0,
        "model_args": {k: list(v) if isinstance(v, tuple) else v for k, v in model_args.items()},
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": list(spec.mean),
            "std": list(spec.std),
        },
    }
