"""A third pretraining method in one file, for the tests: VICReg (Bardes et al. 2022), small.

It is what docs/training.md's "Adding a method" describes: an ``nn.Module`` mixing in ``PretrainMethod``,
registered with one line (``methods.register("toy")(ToyMethod)`` in the test; ``@register("vicreg")`` on the
class for a real one). Encoder: the same Swin ``swinViT`` as every method, so its ``encoder.pt`` fine-tunes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ioussl.config import RunConfig
from ioussl.science.evaluate.metrics import CollapseMeter
from ioussl.science.models.swin import SwinEncoder, encoder_dim
from ioussl.science.train.methods.base import Forward, PretrainMethod, detached_copy

EXPANDER = 64


class ToyMethod(nn.Module, PretrainMethod):
    name = "toy"

    def __init__(self, cfg: RunConfig, steps_per_epoch: int) -> None:
        nn.Module.__init__(self)
        PretrainMethod.__init__(self, cfg, steps_per_epoch)
        self.backbone = SwinEncoder(cfg.model, cfg.model.pretrain_drop_path)
        self.expander = nn.Sequential(nn.Linear(encoder_dim(cfg.model), EXPANDER), nn.BatchNorm1d(EXPANDER),
                                      nn.ReLU(), nn.Linear(EXPANDER, EXPANDER))  # fmt: skip
        self.meter, self.counted, self._last = CollapseMeter(), 0, None

    def forward(self, x: Tensor) -> Tensor:
        return self.expander(self.backbone(x))

    def make_optimizer(self, fused: bool) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)

    def set_hyper(self, optimizer: torch.optim.Optimizer, step: int, epoch: int) -> dict[str, float]:
        return {"lr": optimizer.param_groups[0]["lr"]}

    def loss(self, forward: Forward, view1: Tensor, view2: Tensor, epoch: int) -> Tensor:
        z1, z2 = forward(view1).float(), forward(view2).float()
        self._last = z1.detach()
        invariance = F.mse_loss(z1, z2)
        variance = sum(F.relu(1 - torch.sqrt(z.var(dim=0) + 1e-4)).mean() for z in (z1, z2))
        covariance = sum(_off_diagonal(torch.cov(z.T)).pow(2).sum() / EXPANDER for z in (z1, z2))
        return 25 * invariance + 25 * variance + covariance

    @torch.no_grad()
    def after_update(self, step: int, epoch: int) -> None:
        self.meter.update(self._last)
        self.counted += 1

    def collapse(self) -> dict[str, float]:
        values = {"collapse": self.meter.value(), "toy_steps": self.counted}
        self.meter, self.counted = CollapseMeter(), 0
        return values

    def encoder_states(self) -> dict[str, dict[str, Tensor]]:
        return {"model": detached_copy(self.backbone.swin)}


def _off_diagonal(matrix: Tensor) -> Tensor:
    return matrix - torch.diag(torch.diagonal(matrix))
