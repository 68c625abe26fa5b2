"""DINO (Caron et al. 2021) on IoU pairs, as the thesis' own code runs it (thesis protocol notes §5).

Student and teacher are each the Swin encoder plus a head (MLP 16C -> 2048 -> 2048 -> 256 with GELU, L2
normalisation, a bias-free 256 -> out_dim layer whose rows are unit vectors: weight normalisation with its
norm fixed at 1). Two views, no multi-crop: the student sees (x1, x2) and the teacher (x2, x1) as one
concatenated batch each, and the loss is the cross-entropy between the teacher's centred, sharpened softmax
and the student's, over the 2B rows. The teacher learns only by EMA of the student (momentum cosine from
0.9995 to 1 per step), the centre by EMA (0.9) of the teacher's batch mean, both after the optimiser step.
AdamW: lr with a linear warm-up from 0 (numpy ``linspace``, so the last warm-up step reaches the peak) then
cosine, weight decay cosine 0.04 -> 0.4 on the decayed group, each parameter's gradient clipped to norm 3.0
on its own, and the last layer's gradient dropped in the first epoch. Every number is a ``[pretrain.dino]``
setting (``ioussl.config.DinoConfig``).

Where it differs from the reference, on purpose: the teacher, the centre and the schedule position are in
``last.pt`` (a resume continues exactly), and ``encoder.pt`` holds the teacher's and the student's encoders
under the fine-tuning network's key names (the reference saved the student's bare weights, which its
fine-tuning script could not load). As in the reference, the teacher runs in training mode (drop path on).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ioussl.config import DinoConfig, RunConfig
from ioussl.science.distributed import mean_over_ranks
from ioussl.science.evaluate.metrics import CollapseMeter
from ioussl.science.models.swin import SwinEncoder, encoder_dim
from ioussl.science.train.methods.base import Forward, PretrainMethod, detached_copy
from ioussl.science.train.optim import decay_groups
from ioussl.science.train.schedules import cosine_lr


class NormalisedLinear(nn.Module):
    """A bias-free linear layer whose weight rows are used as unit vectors: ``x @ (v / ||v||_row).T``.

    That is ``nn.utils.weight_norm`` with its magnitude g fixed at 1 and not learnt, as DINO's last layer;
    only the direction v is a parameter (initialised as ``nn.Linear``'s weight).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1))


class DinoHead(nn.Module):
    """MLP (GELU) -> L2 normalisation -> ``NormalisedLinear``: ``[N, in_dim] -> [N, out_dim]``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )  # fmt: skip
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):  # DINO's initialisation of the MLP (not of the last layer)
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = NormalisedLinear(bottleneck_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class DinoNetwork(nn.Module):
    """Swin encoder + DINO head, one of the two networks (student or teacher)."""

    def __init__(self, cfg: RunConfig, dino: DinoConfig) -> None:
        super().__init__()
        self.backbone = SwinEncoder(cfg.model, cfg.model.pretrain_drop_path)
        self.head = DinoHead(encoder_dim(cfg.model), dino.out_dim, dino.hidden_dim, dino.bottleneck_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def dino_loss(student: Tensor, teacher: Tensor, center: Tensor, student_temp: float, teacher_temp: float) -> Tensor:
    """Mean over rows of H(softmax((t - c) / tau_t), softmax(s / tau_s)); the teacher side is a constant."""
    return cross_entropy(student, teacher_probabilities(teacher, center, teacher_temp), student_temp)


def cross_entropy(student: Tensor, target: Tensor, student_temp: float) -> Tensor:
    """Mean over rows of -sum_k target_k log softmax(s / tau_s)_k, in float32 whatever the autocast type."""
    log_student = F.log_softmax(_fp32_or_wider(student) / student_temp, dim=-1)
    return torch.sum(-target * log_student, dim=-1).mean()


@torch.no_grad()
def teacher_probabilities(teacher: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """The teacher's centred, sharpened distribution (no gradient)."""
    return F.softmax((_fp32_or_wider(teacher) - center) / teacher_temp, dim=-1)


@torch.no_grad()
def update_center(center: Tensor, teacher: Tensor, momentum: float) -> None:
    """c <- m c + (1 - m) mean_rows(teacher), in place; the rows of every process of a multi-GPU job (DINO's
    ``update_center`` all-reduces the batch mean), so every rank keeps the same centre."""
    batch_mean = mean_over_ranks(teacher.to(center.dtype).mean(dim=0, keepdim=True))
    center.mul_(momentum).add_(batch_mean * (1.0 - momentum))


def _fp32_or_wider(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def linspace_warmup_cosine(step: int, total_steps: int, base: float, end: float, warmup_steps: int) -> float:
    """DINO's schedule: ``linspace(0, base, warmup_steps)`` for the warm-up steps (the last one is ``base``),
    then the cosine of :func:`cosine_lr` from ``base`` towards ``end`` over the remaining steps."""
    if step < warmup_steps:
        return base * step / (warmup_steps - 1) if warmup_steps > 1 else 0.0
    return cosine_lr(step, total_steps, base, end, warmup_steps)


def teacher_temperature(epoch: int, dino: DinoConfig) -> float:
    """Linear from ``warmup_teacher_temp`` to ``teacher_temp`` over the warm-up epochs (numpy ``linspace``),
    then constant."""
    warmup = dino.warmup_teacher_temp_epochs
    if epoch >= warmup:
        return dino.teacher_temp
    if warmup == 1:
        return dino.warmup_teacher_temp
    return dino.warmup_teacher_temp + (dino.teacher_temp - dino.warmup_teacher_temp) * epoch / (warmup - 1)


class DinoMethod(nn.Module, PretrainMethod):
    """Student, teacher and centre; ``forward`` is the student's (the training forward the loop may compile)."""

    name = "dino"
    center: Tensor  # a buffer: nn.Module's __getattr__ is typed Tensor | Module
    _sums: Tensor | None  # the epoch's statistics, on the training device: no host read per step
    _counted: int

    def __init__(self, cfg: RunConfig, steps_per_epoch: int) -> None:
        nn.Module.__init__(self)
        PretrainMethod.__init__(self, cfg, steps_per_epoch)
        assert cfg.pretrain is not None and cfg.pretrain.dino is not None
        self.settings = cfg.pretrain.dino
        self.student = DinoNetwork(cfg, self.settings)
        self.teacher = DinoNetwork(cfg, self.settings)
        self.teacher.load_state_dict(self.student.state_dict())  # both start from the same weights
        self.teacher.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, self.settings.out_dim))
        self._stash: tuple[Tensor, Tensor, Tensor] | None = None
        self._reset_statistics()

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)

    def make_optimizer(self, fused: bool) -> torch.optim.Optimizer:
        groups = decay_groups(self.student, self.settings.weight_decay, "student")
        kwargs = {"fused": True} if fused else {}
        return torch.optim.AdamW(groups, lr=self.settings.base_lr, betas=(0.9, 0.999), eps=1e-8, **kwargs)

    def set_hyper(self, optimizer: torch.optim.Optimizer, step: int, epoch: int) -> dict[str, float]:
        dino, total = self.settings, self.total_steps
        lr = linspace_warmup_cosine(step, total, dino.base_lr, dino.end_lr, dino.warmup_epochs * self.steps_per_epoch)
        weight_decay = cosine_lr(step, total, dino.weight_decay, dino.weight_decay_end)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if group["name"].endswith("/decay"):  # the not-decayed group keeps 0
                group["weight_decay"] = weight_decay
        return {"lr": lr, "weight_decay": weight_decay, "teacher_momentum": self.teacher_momentum(step),
                "teacher_temp": teacher_temperature(epoch, dino)}  # fmt: skip

    def teacher_momentum(self, step: int) -> float:
        return cosine_lr(step, self.total_steps, self.settings.teacher_momentum, 1.0)

    def loss(self, forward: Forward, view1: Tensor, view2: Tensor, epoch: int) -> Tensor:
        student = forward(torch.cat([view1, view2]))
        with torch.no_grad():
            teacher = self.teacher(torch.cat([view2, view1]))  # row i of the teacher is the other view of row i
        target = teacher_probabilities(teacher, self.center, teacher_temperature(epoch, self.settings))
        self._stash = (student.detach(), teacher.detach(), target)
        return cross_entropy(student, target, self.settings.student_temp)

    def before_update(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, epoch: int) -> None:
        if scaler.is_enabled():
            scaler.unscale_(optimizer)
        if epoch < self.settings.freeze_last_layer_epochs:
            for param in self.student.head.last_layer.parameters():
                param.grad = None  # AdamW skips it: no update, no decay, no moments
        if self.settings.clip_grad > 0:
            clip_each(self.student, self.settings.clip_grad)

    @torch.no_grad()
    def after_update(self, step: int, epoch: int) -> None:
        momentum = self.teacher_momentum(step)
        teacher: list[Tensor] = list(self.teacher.parameters())
        student = [p.detach() for p in self.student.parameters()]
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, torch._foreach_mul(student, 1.0 - momentum))
        if self._stash is None:
            return
        out_student, out_teacher, probs = self._stash
        self._stash = None
        update_center(self.center, out_teacher, self.settings.center_momentum)
        self.meter.update(out_student)
        mean = mean_over_ranks(probs.mean(dim=0))  # the global batch's mean distribution
        sums = torch.stack([-torch.special.xlogy(probs, probs).sum(dim=1).mean(),  # teacher entropy (nats)
                            torch.special.xlogy(mean, mean * mean.numel()).sum()]).double()  # KL(mean || uniform)
        self._sums = sums if self._sums is None else self._sums + sums
        self._counted += 1

    def collapse(self) -> dict[str, float]:
        """``collapse`` of the student's output (as SimSiam's of p), the teacher's mean per-sample entropy
        and the KL divergence of its batch-mean distribution from uniform, averaged over the epoch's steps."""
        if self._sums is None:
            values = {"collapse": math.nan, "teacher_entropy": math.nan, "teacher_kl_uniform": math.nan}
        else:
            entropy, kl = (value / self._counted for value in self._sums.tolist())  # the epoch's one host read
            values = {"collapse": self.meter.value(), "teacher_entropy": entropy, "teacher_kl_uniform": kl}
        self._reset_statistics()
        return values

    def epoch_state(self) -> dict[str, Any]:
        sums = None if self._sums is None else self._sums.detach().cpu()
        return {"meter": self.meter.state(), "sums": sums, "counted": self._counted}

    def load_epoch_state(self, state: dict[str, Any]) -> None:
        self.meter.load(state["meter"], self.center.device)
        sums = state["sums"]
        self._sums = None if sums is None else sums.to(self.center.device)
        self._counted = int(state["counted"])

    def _reset_statistics(self) -> None:
        self.meter = CollapseMeter()
        self._sums = None
        self._counted = 0

    def encoder_states(self) -> dict[str, dict[str, Tensor]]:
        """The teacher's encoder by default (DINO's authors evaluate the teacher), the student's beside it."""
        teacher, student = self.teacher.backbone.swin, self.student.backbone.swin
        return {"model": detached_copy(teacher), "student": detached_copy(student)}


@torch.no_grad()
def clip_each(module: nn.Module, max_norm: float) -> None:
    """Scale each parameter's gradient to norm at most ``max_norm`` on its own (DINO's ``clip_gradients``:
    factor ``max_norm / (norm + 1e-6)`` where it is below 1), without a host read per parameter."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads, 2.0)
    factors = [torch.clamp(max_norm / (norm + 1e-6), max=1.0) for norm in norms]
    torch._foreach_mul_(grads, factors)
