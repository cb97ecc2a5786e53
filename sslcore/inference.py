"""Embedding images with a trained backbone: the code path shared by evaluation and serving.

The registered MLflow model ships ``encoder.json`` (:class:`EncoderSpec`) and the backbone's
``state_dict`` as safetensors; :meth:`Encoder.load` rebuilds it from those two files with timm alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from sslcore.backbones import create_backbone, feature_dim
from sslcore.config import ModelConfig
from sslcore.transforms import preprocess


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
