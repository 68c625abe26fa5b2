"""SimSiam (Chen & He 2021) behind the method interface: the thesis' pretraining, unchanged.

Two forward passes per step (one per view, so batch-norm statistics are per view, as in the reference code),
the symmetric negative cosine loss, SGD over six parameter groups with the predictor's learning rate fixed,
the per-iteration cosine schedule of Table 4.1, and the collapse coefficient of the predictor output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ioussl.config import RunConfig
from ioussl.science.evaluate.metrics import CollapseMeter
from ioussl.science.models.swin import SimSiam
from ioussl.science.train import losses
from ioussl.science.train.methods.base import Forward, PretrainMethod
from ioussl.science.train.optim import pretrain_optimizer, set_lr
from ioussl.science.train.schedules import cosine_lr


class SimSiamMethod(SimSiam, PretrainMethod):
    """The SimSiam network itself (state-dict keys ``backbone.``, ``projection.``, ``prediction.``)."""

    name = "simsiam"

    def __init__(self, cfg: RunConfig, steps_per_epoch: int) -> None:
        assert cfg.pretrain is not None
        SimSiam.__init__(self, cfg.model, cfg.pretrain)
        PretrainMethod.__init__(self, cfg, steps_per_epoch)
        self.settings = cfg.pretrain
        self.meter = CollapseMeter()
        self._outputs: Tensor | None = None

    def make_optimizer(self, fused: bool) -> torch.optim.Optimizer:
        return pretrain_optimizer(self, self.settings, fused=fused)

    def set_hyper(self, optimizer: torch.optim.Optimizer, step: int, epoch: int) -> dict[str, float]:
        pre = self.settings
        lr = cosine_lr(step, self.total_steps, pre.base_lr, pre.end_lr, pre.warmup_epochs * self.steps_per_epoch)
        set_lr(optimizer, lr)
        return {"lr": lr}

    def loss(self, forward: Forward, view1: Tensor, view2: Tensor, epoch: int) -> Tensor:
        z1, p1 = forward(view1)
        z2, p2 = forward(view2)
        self._outputs = p1.detach()
        return losses.simsiam_loss(z1, p1, z2, p2)

    @torch.no_grad()
    def after_update(self, step: int, epoch: int) -> None:
        if self._outputs is not None:
            self.meter.update(self._outputs)
            self._outputs = None

    def collapse(self) -> dict[str, float]:
        value = self.meter.value()
        self.meter = CollapseMeter()
        return {"collapse": value}

    def epoch_state(self) -> dict[str, Any]:
        return {"meter": self.meter.state()}

    def load_epoch_state(self, state: dict[str, Any]) -> None:
        self.meter.load(state["meter"], next(self.parameters()).device)

    def encoder_states(self) -> dict[str, dict[str, Tensor]]:
        return {"model": self.encoder_state_dict()}
