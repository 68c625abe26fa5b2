"""Optimisers with the thesis' parameter groups (thesis protocol notes §3, §4).

Biases and every 1-D parameter (LayerNorm / BatchNorm weights) get no weight decay; the 2-D Swin
relative-position bias tables are decayed, as in the reference code. Pretraining has six groups
(decayed / not decayed for backbone, projection and prediction); the schedule drives all but the
prediction head's, which keeps its base learning rate (SimSiam §4.4, "fixed lr for the predictor").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ioussl.config import FinetuneConfig, PretrainConfig


def decay_groups(module: nn.Module, weight_decay: float, name: str) -> list[dict[str, Any]]:
    """Split ``module``'s trainable parameters into a decayed and a not-decayed group."""
    decayed: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for key, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (plain if key.endswith(".bias") or param.ndim <= 1 else decayed).append(param)
    return [
        {"params": decayed, "weight_decay": weight_decay, "name": f"{name}/decay"},
        {"params": plain, "weight_decay": 0.0, "name": f"{name}/no_decay"},
    ]


def pretrain_optimizer(model: nn.Module, cfg: PretrainConfig, fused: bool = False) -> torch.optim.SGD:
    """SGD(momentum 0.9) over six groups; groups marked ``scheduled`` follow the cosine schedule."""
    groups = []
    for part in ("backbone", "projection", "prediction"):
        for group in decay_groups(getattr(model, part), cfg.weight_decay, part):
            group["scheduled"] = part != "prediction"
            groups.append(group)
    kwargs = {"fused": True} if fused else {}
    return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, **kwargs)


def finetune_optimizer(model: nn.Module, cfg: FinetuneConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW(0.9, 0.999, eps 1e-8) over the whole network, decayed and not-decayed groups."""
    groups = decay_groups(model, cfg.weight_decay, "model")
    for group in groups:
        group["scheduled"] = True
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=cfg.base_lr, betas=(0.9, 0.999), eps=1e-8, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write ``lr`` into every scheduled group; unscheduled groups keep their initial lr."""
    for group in optimizer.param_groups:
        if group.get("scheduled", True):
            group["lr"] = lr
