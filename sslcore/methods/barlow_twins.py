"""Barlow Twins, Zbontar et al. 2021, https://arxiv.org/abs/2103.03230.

Two augmented views of each image pass through the backbone and an MLP projector; the loss pushes
the cross-correlation matrix of the two (batch-standardised) embeddings towards the identity:
matching dimensions agree across views, different dimensions are decorrelated. No negatives, no
teacher, no predictor.
"""

from __future__ import annotations

from torch import Tensor, nn

from sslcore.backbones import feature_dim
from sslcore.health import embedding_std
from sslcore.losses import barlow_twins_loss
from sslcore.method_config import BarlowTwinsConfig
from sslcore.methods.base import METHODS, StepValues, TwoViewMethod, global_pair
from sslcore.nn.heads import BarlowTwinsProjectionHead


@METHODS.register("barlow_twins")
class BarlowTwins(TwoViewMethod):
    """Backbone + projector trained with the Barlow Twins loss.

    Attributes:
        backbone: maps (B, C, H, W) to features (B, F); the part that is kept after pretraining.
        projection_head: the projector, features -> embeddings (B, projection_dim).
    """

    def __init__(self, backbone: nn.Module, cfg: BarlowTwinsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projection_head = BarlowTwinsProjectionHead(
            feature_dim(backbone), cfg.projection_hidden_dim, cfg.projection_dim
        )

    def forward(self, views: list[Tensor], values: StepValues | None = None) -> dict[str, Tensor]:
        """Loss of two views ``[x0, x1]``, each (B, C, H, W); Barlow Twins has no scheduled values."""
        z0, z1 = self.joint_pass("BarlowTwins", views)
        local = z0
        z0, z1 = global_pair(z0, z1, self.cfg.gather_distributed)
        terms = barlow_twins_loss(z0, z1, lambda_offdiag=self.cfg.lambda_offdiag, eps=self.cfg.eps)
        return {
            "loss": terms.loss,
            "embedding_std": embedding_std(local.detach()),
            "on_diag": terms.on_diag.detach(),
            "off_diag": terms.off_diag.detach(),
        }
