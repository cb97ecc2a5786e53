"""A kNN curve during pretraining: after every epoch, the backbone embeds a fixed labelled sample
of the ingested data and a weighted kNN (k=20, T=0.07) scores it. Labels are used only to watch
training, never to train: it is the online kNN of solo-learn and DINO's logs, and it shows early
when a run stops learning or collapses.

The work is split across DDP ranks (each embeds every ``world``-th image) and gathered, so it
costs ``1/world`` of a forward pass over the sample per epoch.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sslcore.config import PipelineConfig, StorageConfig
from sslcore.data.manifest import Manifest
from sslcore.data.stream import load_split_arrays
from sslcore.evaluation.knn import knn_accuracy
from sslcore.transforms import preprocess

K, TEMPERATURE = 20, 0.07


class KnnMonitor:
    """Top-1 kNN accuracy of a backbone on up to ``samples`` train images (the bank) and up to
    ``samples // 2`` held-out images (the queries: the ``val`` split if it has samples, else
    ``test``), preprocessed once as in evaluation."""

    def __init__(
        self, bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, classes: int, world: int = 1
    ) -> None:
        """``bank`` and ``queries`` hold this rank's images (every ``world``-th), the labels all of them."""
        self.bank, self.bank_labels = bank, bank_labels
        self.queries, self.query_labels = queries, query_labels
        self.classes = classes
        self.world = world

    @classmethod
    def from_shards(
        cls,
        cfg: PipelineConfig,
        manifest: Manifest,
        folder: str | Path,
        samples: int,
        storage: StorageConfig | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> KnnMonitor | None:
        """The monitor for ingested shards, or None when they have no labels or no held-out split.
        Each of ``world`` ranks preprocesses only its own share of the images."""
        held_out = next((s for s in ("val", "test") if s in manifest.splits and manifest.splits[s].samples), None)
        if held_out is None or manifest.num_classes < 2:
            return None
        parts = []
        for split, limit in (("train", samples), (held_out, max(1, samples // 2))):
            images, labels = load_split_arrays(manifest, folder, split, storage, limit=limit)
            if not images or (labels < 0).any():
                return None
            size, mean, std = cfg.model.image_size, cfg.augment.mean, cfg.augment.std
            x = torch.cat([preprocess(img[None], size, mean, std) for img in images[rank::world]])
            parts += [x, torch.as_tensor(labels)]
        return cls(*parts, classes=manifest.num_classes, world=world)

    @torch.no_grad()
    def _embed(self, backbone: nn.Module, mine: Tensor, total: int, device: torch.device, batch: int = 256) -> Tensor:
        """Embed this rank's images and gather everyone's, back in the original order."""
        out = [backbone(mine[i : i + batch].to(device)).float().cpu() for i in range(0, len(mine), batch)]
        local = torch.cat(out) if out else torch.zeros(0, 0)
        world = self.world
        if world == 1:
            return local
        parts: list[Tensor | None] = [None] * world
        dist.all_gather_object(parts, local)
        full = torch.zeros(total, max(p.shape[1] for p in parts if p is not None))
        for r, part in enumerate(parts):
            if part is not None and len(part):
                full[r::world] = part
        return full

    def __call__(self, backbone: nn.Module, device: torch.device) -> float:
        """Top-1 accuracy; every rank must call it (the embeddings are gathered). The backbone is put
        in eval mode (batch-norm statistics untouched) and back."""
        was_training = backbone.training
        backbone.eval()
        try:
            bank = self._embed(backbone, self.bank, len(self.bank_labels), device)
            queries = self._embed(backbone, self.queries, len(self.query_labels), device)
        finally:
            backbone.train(was_training)
        scores = knn_accuracy(
            queries, self.query_labels, bank, self.bank_labels, num_classes=self.classes, k=K, temperature=TEMPERATURE
        )
        return scores["top1"]


class RetrievalMonitor:
    """A label-free curve for any data: augmentation-invariance self-retrieval
    (:func:`sslcore.evaluation.retrieval.self_retrieval`) of up to ``samples`` held-out images
    against their own augmented views. The views are drawn once, with ``cfg.train.seed``, so that
    every epoch is scored on the same pairs. Every rank holds all the images (a few hundred small
    tensors) and rank 0's score is the one reported; the forward passes are not split."""

    def __init__(self, gallery: Tensor, queries: Tensor) -> None:
        self.gallery, self.queries = gallery, queries

    @classmethod
    def from_shards(
        cls, cfg: PipelineConfig, manifest: Manifest, folder: str | Path, samples: int, storage: StorageConfig | None
    ) -> RetrievalMonitor | None:
        """The monitor for ingested shards, or None without a held-out split of at least 2 images."""
        from PIL import Image

        from sslcore.transforms import view_transform

        held_out = next((s for s in ("val", "test") if s in manifest.splits and manifest.splits[s].samples > 1), None)
        if held_out is None:
            return None
        images, _ = load_split_arrays(manifest, folder, held_out, storage, limit=samples)
        size, mean, std = cfg.model.image_size, cfg.augment.mean, cfg.augment.std
        gallery = torch.cat([preprocess(img[None], size, mean, std) for img in images])
        generator_state = torch.get_rng_state()
        torch.manual_seed(cfg.train.seed)
        try:
            transform = view_transform(cfg.augment, size)
            queries = torch.stack([transform(Image.fromarray(img)) for img in images])
        finally:
            torch.set_rng_state(generator_state)  # the training RNG stays where it was
        return cls(gallery, queries)

    @torch.no_grad()
    def __call__(self, backbone: nn.Module, device: torch.device, batch: int = 256) -> float:
        """Top-1 self-retrieval; the backbone is put in eval mode and back."""
        from sslcore.evaluation.retrieval import self_retrieval

        was_training = backbone.training
        backbone.eval()
        try:
            embed = [
                torch.cat([backbone(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])
                for x in (self.gallery, self.queries)
            ]
        finally:
            backbone.train(was_training)
        return self_retrieval(embed[0], embed[1], ks=(1,))["top1"]
