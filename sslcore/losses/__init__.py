"""Self-supervised losses as pure functions of tensors: no state, no collectives."""

from sslcore.losses.barlow_twins import BarlowTwinsLoss, barlow_twins_loss
from sslcore.losses.byol import byol_loss
from sslcore.losses.dino import dino_loss
from sslcore.losses.feature_regression import feature_regression_loss, layer_average_targets
from sslcore.losses.ibot import ibot_loss
from sslcore.losses.infonce import infonce, infonce_in_batch
from sslcore.losses.koleo import koleo_loss
from sslcore.losses.mae import mae_loss, patchify
from sslcore.losses.ntxent import ntxent
from sslcore.losses.vicreg import VICRegLoss, vicreg_loss

__all__ = [
    "BarlowTwinsLoss",
    "VICRegLoss",
    "barlow_twins_loss",
    "byol_loss",
    "dino_loss",
    "feature_regression_loss",
    "ibot_loss",
    "infonce",
    "infonce_in_batch",
    "koleo_loss",
    "layer_average_targets",
    "mae_loss",
    "ntxent",
    "patchify",
    "vicreg_loss",
]
