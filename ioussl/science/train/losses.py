"""Training losses: SimSiam's symmetric negative cosine and the fine-tuning Dice + cross-entropy."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """D(p, z) = -mean cosine similarity over the batch (SimSiam eq. 1). ``z`` must already be detached."""
    return -F.cosine_similarity(p, z, dim=-1).mean()


def simsiam_loss(z1: Tensor, p1: Tensor, z2: Tensor, p2: Tensor) -> Tensor:
    """Symmetric loss L = D(p1, z2)/2 + D(p2, z1)/2 (SimSiam eq. 2); z1 and z2 carry the stop-gradient."""
    return 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))


def segmentation_loss() -> nn.Module:
    """MONAI DiceCELoss as the thesis used it: one-hot targets, softmax, background in the Dice, 1:1."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)
