"""The loops only: one SimSiam epoch, one segmentation epoch, one evaluation (MAE's engine split).

Setup (models, data, resume) lives in ``pretrain.py`` / ``finetune.py``; these functions take ready objects,
run a fixed number of steps and return plain numbers, so they run the same on a laptop CPU and a GPU node.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ioussl.errors import TrainingError
from ioussl.science.losses import simsiam_loss
from ioussl.science.metrics import CollapseMeter, slice_dsc
from ioussl.science.optim import set_lr
from ioussl.science.runtime import Runtime, eval_mode


@dataclass
class StepState:
    """What one optimisation step needs besides the batch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    runtime: Runtime
    schedule: Callable[[int], float]
    epoch: int = 0
    compiled: nn.Module | None = None  # torch.compile(model) for the training forward; model keeps the weights

    @property
    def forward(self) -> nn.Module:
        return self.compiled if self.compiled is not None else self.model


def cycle(loader: Iterable[Any]) -> Iterator[Any]:
    """Yield batches forever, starting a new pass (a new shuffle) when one ends."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise TrainingError("the data loader yields no batches (fewer samples than one batch?)")


def _optimise(state: StepState, loss: Tensor, step: int) -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingError(f"non-finite loss {value} at step {step} (epoch {state.epoch}); stopping")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return value


def train_one_epoch_simsiam(state: StepState, batches: Iterator[dict], start_step: int, steps: int) -> dict:
    """``steps`` SimSiam updates; each view has its own forward pass (per-view BN statistics)."""
    state.model.train()
    meter, losses, fallbacks, pairs, iou_sum = CollapseMeter(), [], 0, 0, 0.0
    lr = state.schedule(start_step)
    began = time.perf_counter()
    for step in range(start_step, start_step + steps):
        batch = next(batches)
        lr = state.schedule(step)
        set_lr(state.optimizer, lr)
        view1, view2 = state.runtime.to_device(batch["view1"]), state.runtime.to_device(batch["view2"])
        with state.runtime.autocast():
            z1, p1 = state.forward(view1)
            z2, p2 = state.forward(view2)
            loss = simsiam_loss(z1, p1, z2, p2)
        losses.append(_optimise(state, loss, step))
        meter.update(p1)
        fallbacks += int(torch.as_tensor(batch["fallback"]).sum())
        iou_sum += float(torch.as_tensor(batch["iou"], dtype=torch.float64).sum())
        pairs += view1.shape[0]
    seconds = time.perf_counter() - began
    return {
        "loss": float(np.mean(losses)),
        "lr": lr,
        "collapse": meter.value(),
        "fallback_rate": fallbacks / max(1, pairs),
        "mean_iou": iou_sum / max(1, pairs),
        "pairs_per_s": pairs / max(seconds, 1e-9),
        "seconds": seconds,
    }


def train_one_epoch_seg(
    state: StepState, batches: Iterator[dict], loss_fn: nn.Module, start_step: int, steps: int
) -> dict:
    """``steps`` segmentation updates with Dice + cross-entropy on batches of crops."""
    state.model.train()
    losses, crops = [], 0
    lr = state.schedule(start_step)
    began = time.perf_counter()
    for step in range(start_step, start_step + steps):
        batch = next(batches)
        lr = state.schedule(step)
        set_lr(state.optimizer, lr)
        image, label = state.runtime.to_device(batch["image"]), state.runtime.to_device(batch["label"])
        with state.runtime.autocast():
            logits = state.forward(image)
        loss = loss_fn(
            logits.float(), label
        )  # the loss in fp32: softmax and Dice ratios are precision-sensitive
        losses.append(_optimise(state, loss, step))
        crops += image.shape[0]
    seconds = time.perf_counter() - began
    return {
        "loss": float(np.mean(losses)),
        "lr": lr,
        "crops_per_s": crops / max(seconds, 1e-9),
        "seconds": seconds,
    }


@dataclass
class Evaluation:
    """Per-slice thesis DSCs and per-case, per-class voxel counts for the 3D DSC on the preprocessed grid."""

    slice_scores: list[float] = field(default_factory=list)
    counts: dict[str, np.ndarray] = field(default_factory=dict)  # case -> [3, classes]: inter, pred, truth

    @property
    def dsc(self) -> float:
        return float(np.mean(self.slice_scores)) if self.slice_scores else float("nan")

    def add_counts(self, case: str, pred: Tensor, truth: Tensor, num_classes: int) -> None:
        """Accumulate |P∩T|, |P|, |T| per class: summed over a case's slices they give its 3D Dice."""
        p, t = pred.flatten().long(), truth.flatten().long()
        inter = torch.bincount(p[p == t], minlength=num_classes)
        row = torch.stack(
            [inter, torch.bincount(p, minlength=num_classes), torch.bincount(t, minlength=num_classes)]
        )
        self.counts[case] = self.counts.get(case, 0) + row.cpu().numpy()


def evaluate(
    model: nn.Module, loader: Iterable[dict], runtime: Runtime, window: dict[str, Any], num_classes: int
) -> Evaluation:
    """Sliding-window inference on whole slices (uniform blending, zero padding), scored both ways.

    Args:
        window: ``roi`` side, ``sw_batch_size`` and ``overlap`` for MONAI's sliding_window_inference.
    """
    from monai.inferers import sliding_window_inference

    result = Evaluation()
    with eval_mode(model):
        for batch in loader:
            image, label = runtime.to_device(batch["image"]), batch["label"]
            with runtime.autocast():
                logits = sliding_window_inference(
                    image, (window["roi"],) * 2, window["sw_batch_size"], model, overlap=window["overlap"]
                )
            logits = logits.float().cpu()
            result.slice_scores.extend(slice_dsc(logits, label, num_classes).tolist())
            pred = logits.argmax(dim=1)
            for i, case in enumerate(batch["case"]):
                result.add_counts(case, pred[i], label[i, 0], num_classes)
    return result
