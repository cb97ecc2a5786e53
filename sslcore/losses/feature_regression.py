"""Regression of teacher features at masked positions, data2vec style (Baevski et al. 2022,
https://arxiv.org/abs/2202.03555, sec. 3.3 and 3.4): the target of a masked patch is the average of
the teacher's top-K block outputs, each instance-normalised over the tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sslcore.losses.precision import at_least_fp32


def layer_average_targets(layer_outputs: list[Tensor]) -> Tensor:
    """data2vec's target: instance-normalise each (B, N, D) block output over its N tokens, per
    channel, then average the layers. Returns (B, N, D), detached."""
    if not layer_outputs:
        raise ValueError("need at least one layer output")
    normed = [F.instance_norm(at_least_fp32(t.detach()).transpose(1, 2)).transpose(1, 2) for t in layer_outputs]
    return torch.stack(normed).mean(dim=0)


def feature_regression_loss(prediction: Tensor, target: Tensor, *, beta: float) -> Tensor:
    """Smooth L1 (``beta`` > 0) or squared error (``beta`` = 0) between predicted and target
    features of the masked patches, summed over D and averaged over patches.

    Args:
        prediction: (M, D) student predictions for the M masked patches.
        target: (M, D) teacher targets; no gradient flows into them.
        beta: Smooth-L1 transition point; 0 gives the plain squared error.

    Returns:
        Scalar loss.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"shapes differ: {tuple(prediction.shape)} vs {tuple(target.shape)}")
    if prediction.shape[0] == 0:
        return prediction.sum() * 0.0
    target = at_least_fp32(target.detach())
    if beta == 0:
        per_patch = F.mse_loss(at_least_fp32(prediction), target, reduction="none").sum(-1)
    else:
        per_patch = F.smooth_l1_loss(at_least_fp32(prediction), target, reduction="none", beta=beta).sum(-1)
    return per_patch.mean()
