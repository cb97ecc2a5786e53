"""VICReg, Bardes, Ponce & LeCun 2022, https://arxiv.org/abs/2105.04906.

Two augmented views of each image pass through the backbone and an MLP expander; the loss keeps
the two embeddings of an image close (invariance) while every embedding dimension keeps a standard
deviation of at least 1 over the batch (variance) and the dimensions stay decorrelated
(covariance). No negatives, no teacher, no predictor.
"""

from __future__ import annotations

from torch import Tensor, nn

from sslcore.backbones import feature_dim
from sslcore.health import embedding_std
from sslcore.losses import vicreg_loss
from sslcore.method_config import VICRegConfig
from sslcore.methods.base import METHODS, StepValues, TwoViewMethod, global_pair
from sslcore.nn.heads import VICRegProjectionHead


@METHODS.register("vicreg")
class VICReg(TwoViewMethod):
    """Backbone + expander trained with the VICReg loss.

    Attributes:
        backbone: maps (B, C, H, W) to features (B, F); the part that is kept after pretraining.
        projection_head: the expander, features -> embeddings (B, projection_dim).
    """

    def __init__(self, backbone: nn.Module, cfg: VICRegConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projection_head = VICRegProjectionHead(
            feature_dim(backbone), cfg.projection_hidden_dim, cfg.projection_dim
        )

    def forward(self, views: list[Tensor], values: StepValues | None = None) -> dict[str, Tensor]:
        """Loss of two views ``[x0, x1]``, each (B, C, H, W); VICReg has no scheduled values."""
        z0, z1 = self.joint_pass("VICReg", views)
        local = z0
        z0, z1 = global_pair(z0, z1, self.cfg.gather_distributed)
        cfg = self.cfg
        terms = vicreg_loss(
            z0, z1, sim_weight=cfg.sim_weight, var_weight=cfg.var_weight, cov_weight=cfg.cov_weight, eps=cfg.eps
        )
        return {
            "loss": terms.loss,
            "embedding_std": embedding_std(local.detach()),
            "invariance": terms.invariance.detach(),
            "variance": terms.variance.detach(),
            "covariance": terms.covariance.detach(),
        }
