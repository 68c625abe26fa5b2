"""The small interface every self-supervised pretraining method implements (SimSiam, DINO, a third one).

The pretraining loop (``engine.train_one_epoch_pretrain``) knows nothing of any method: per step it asks the
method to set its hyperparameters, compute the loss of a pair of views, adjust the gradients before the
optimiser step and update what is not learnt by gradient (a teacher, a centre) after it. A method is an
``nn.Module``: everything it must carry across a resume (teacher weights, a centre) is a parameter or a buffer,
so ``last.pt``'s ``model`` holds it; schedules are pure functions of the global step and epoch, so restoring
the step restores them.

A method is registered by name (``methods.register``); ``pretrain.method`` picks it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ioussl.config import RunConfig

Forward = Callable[[Tensor], Any]  # the (possibly torch.compiled) training forward of the method's module


class PretrainMethod:
    """Mixed into an ``nn.Module``: the hooks the loop calls, in the order it calls them.

    Subclasses set ``name`` and implement ``make_optimizer``, ``set_hyper``, ``loss``, ``collapse`` and
    ``encoder_states``; ``before_update`` and ``after_update`` default to doing nothing.
    """

    name: ClassVar[str]

    def __init__(self, cfg: RunConfig, steps_per_epoch: int) -> None:
        assert cfg.pretrain is not None
        self.total_steps = steps_per_epoch * cfg.pretrain.epochs
        self.steps_per_epoch = steps_per_epoch

    def make_optimizer(self, fused: bool) -> torch.optim.Optimizer:
        """The optimiser over the trainable parameters, with their groups."""
        raise NotImplementedError

    def set_hyper(self, optimizer: torch.optim.Optimizer, step: int, epoch: int) -> dict[str, float]:
        """Write step ``step``'s learning rate (and any other scheduled value) into the optimiser; return the
        scheduled values by name (``lr`` at least), for the epoch's metrics line."""
        raise NotImplementedError

    def loss(self, forward: Forward, view1: Tensor, view2: Tensor, epoch: int) -> Tensor:
        """The loss of one batch of positive pairs (called under autocast); notes what ``collapse`` reports."""
        raise NotImplementedError

    def before_update(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, epoch: int) -> None:
        """Adjust the gradients between the backward pass and the optimiser step (clipping, freezing).
        Gradients are scaled when the scaler is enabled: ``scaler.unscale_(optimizer)`` first."""

    @torch.no_grad()
    def after_update(self, step: int, epoch: int) -> None:
        """Update what gradients do not (a teacher by EMA, a centre) after the optimiser step."""

    def collapse(self) -> dict[str, float]:
        """The epoch's collapse statistics (``collapse`` at least), then start counting afresh."""
        raise NotImplementedError

    def epoch_state(self) -> dict[str, Any]:
        """What ``collapse`` has counted so far this epoch (tensors on the CPU, numbers), for a checkpoint in
        the middle of an epoch (a stop at a step boundary: ``stopping.py``); a method with per-epoch
        statistics returns them here, or its first epoch after such a resume reports the resumed steps only."""
        return {}

    def load_epoch_state(self, state: dict[str, Any]) -> None:
        """Go on counting from ``epoch_state()``'s statistics."""

    def encoder_states(self) -> dict[str, dict[str, Tensor]]:
        """The encoders a fine-tune may start from, each under ``SwinUNETR.swinViT``'s key names: ``model``
        (the default, ``finetune.init_from = "teacher"``) and, where the method has a second one, ``student``."""
        raise NotImplementedError


class MethodStep(nn.Module):
    """One training step's loss as one module call: ``step(view1, view2, epoch)`` is
    ``method.loss(forward, view1, view2, epoch)``.

    ``DistributedDataParallel`` allows one forward call per backward pass, and a method may call its network
    more than once per step (SimSiam once per view, so that batch-norm statistics stay per view, as in the
    reference): wrapped in this module and then in DDP (``distributed.parallel``), everything the loss
    differentiates is one call, whatever the method does inside. With one process it is the plain call.
    """

    training_forward: Forward

    def __init__(self, method: PretrainMethod, forward: Forward | None = None) -> None:
        super().__init__()
        assert isinstance(method, nn.Module)
        self.method = method
        # The (compiled) forward shares the method's parameters: kept out of the module tree, which the
        # method alone describes (as nn.Module.__setattr__ would register a compiled module a second time).
        object.__setattr__(self, "training_forward", forward if forward is not None else method)

    def forward(self, view1: Tensor, view2: Tensor, epoch: int) -> Tensor:
        method: Any = self.method  # an nn.Module mixing in PretrainMethod
        return method.loss(self.training_forward, view1, view2, epoch)


def detached_copy(module: nn.Module) -> dict[str, Tensor]:
    """A module's state dict as detached copies (a checkpoint must not alias live training tensors)."""
    return {key: value.detach().clone() for key, value in module.state_dict().items()}
