"""The loops only: one pretraining epoch (any method), one segmentation epoch, one evaluation (MAE's engine split).

Setup (models, data, resume) lives in ``pretrain.py`` / ``finetune.py``; these functions take ready objects,
run a fixed number of steps and return plain numbers, so they run the same on a laptop CPU and a GPU node.
In a multi-GPU job every process runs them on its share of each batch, and the numbers they return are the
job's: the loss averaged over the processes, counts summed (one all-reduce per epoch).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from ioussl.errors import TrainingError
from ioussl.science.distributed import mean_numbers_over_ranks, min_over_ranks, sum_over_ranks, world_size
from ioussl.science.evaluate.metrics import slice_dsc
from ioussl.science.runtime import Runtime, eval_mode
from ioussl.science.train import stopping
from ioussl.science.train.methods.base import MethodStep, PretrainMethod
from ioussl.science.train.optim import set_lr
from ioussl.science.train.stopping import EpochPart, StoppedAtStep


@dataclass
class StepState:
    """What one optimisation step needs besides the batch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    runtime: Runtime
    schedule: Callable[[int], float] | None = None  # lr per step (fine-tuning); a pretraining method sets its own
    epoch: int = 0
    compiled: nn.Module | None = None  # torch.compile(model) for the training forward; model keeps the weights
    # DistributedDataParallel over the training call when several processes train (distributed.parallel):
    # around the network when fine-tuning, around a methods.base.MethodStep when pretraining.
    parallel: nn.Module | None = None

    @property
    def forward(self) -> nn.Module:
        """The training call: the DDP wrapper across processes, else the compiled or the plain model."""
        if self.parallel is not None:
            return self.parallel
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


Feed = Callable[[dict, int, int], tuple[Tensor, ...]]  # (batch, epoch, step) -> tensors on the device


class EpochSums:
    """What an epoch reports, accumulated on the training device: reading it back is the epoch's one host
    synchronisation (a per-step ``float(loss)`` would stall the GPU queue every step)."""

    def __init__(self, device: torch.device) -> None:
        zero = functools.partial(torch.zeros, (), dtype=torch.float64, device=device)
        self.loss, self.fallbacks, self.iou, self.bad_value = zero(), zero(), zero(), zero()
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def state(self) -> dict[str, Tensor]:
        """The sums so far, on the CPU (a mid-epoch checkpoint's)."""
        return {name: getattr(self, name).detach().cpu() for name in stopping.SUMS}

    def load(self, state: dict[str, Tensor]) -> None:
        """Go on from ``state()``'s sums (a resumed epoch)."""
        for name in stopping.SUMS:
            setattr(self, name, state[name].to(getattr(self, name)))

    def add_loss(self, loss: Tensor, step: int) -> None:
        value = loss.detach().double()
        new_bad = ~torch.isfinite(value) & (self.first_bad < 0)
        self.first_bad = torch.where(new_bad, step, self.first_bad)
        self.bad_value = torch.where(new_bad, value, self.bad_value)
        self.loss += value

    def read(self, epoch: int, items: int) -> dict[str, float]:
        """The sums as floats, the job's (``items``: the pairs or crops this process trained on); a
        TrainingError naming the first step whose loss was not finite, on every process of the job.

        With several processes the loss sum is averaged over them (each one's is the sum of its batch
        means), the counts are summed; every rank raises alike, so none waits for the others forever.
        """
        size = world_size()
        sums = torch.stack([self.loss, self.fallbacks, self.iou, torch.full_like(self.loss, items)])
        if size > 1:
            sums = sum_over_ranks(sums) / torch.tensor([size, 1, 1, 1], dtype=sums.dtype, device=sums.device)
        values = torch.cat([sums, self.bad_value.reshape(1), self.first_bad.double().reshape(1)]).tolist()
        loss, fallbacks, iou, total, bad_value, first_bad = values
        if size > 1:
            bad_value, first_bad = _earliest_bad_step(bad_value, first_bad, self.loss.device)
        if first_bad >= 0:
            raise TrainingError(f"non-finite loss {bad_value} at step {int(first_bad)} (epoch {epoch}); stopping")
        return {"loss": loss, "fallbacks": fallbacks, "iou": iou, "items": total}


def _earliest_bad_step(value: float, step: float, device: torch.device) -> tuple[float, float]:
    """(loss, step) of the earliest non-finite loss on any process, (0, -1) if none; the loss is NaN where
    another process saw it (only the step crosses between processes)."""
    never = float(2**53)
    earliest = min_over_ranks(torch.tensor([step if step >= 0 else never], dtype=torch.float64, device=device))
    found = float(earliest.item())
    if found == never:
        return 0.0, -1.0
    return (value if found == step else math.nan), found


def _optimise(state: StepState, loss: Tensor) -> None:
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)  # fused optimisers take the scaler's inf check without a sync
    state.scaler.update()


def _default_feed(keys: tuple[str, ...], runtime: Runtime) -> Feed:
    return lambda batch, epoch, step: tuple(runtime.to_device(batch[key]) for key in keys)


def train_one_epoch_pretrain(
    state: StepState,
    batches: Iterator[dict],
    start_step: int,
    steps: int,
    feed: Feed | None = None,
    part: EpochPart | None = None,
) -> dict:
    """``steps`` updates of the pretraining method ``state.model`` (a ``methods.PretrainMethod``): SimSiam,
    DINO or any registered one; the method computes the loss and its statistics, the loop does the rest.

    Args:
        start_step: the epoch's first global step.
        feed: puts a batch's two views on the device, ready for the model (and augments them there when
            ``data.augment_on`` is "device"); default: move ``view1`` and ``view2`` as they are.
        part: the steps of this epoch a stopped attempt did (``batches`` then starts after them).

    Raises:
        StoppedAtStep: a stop became due (``stopping.due``) with steps of the epoch left.
    """
    method = state.model
    assert isinstance(method, PretrainMethod), f"{type(method).__name__} is no pretraining method"
    method.train()
    feed = feed or _default_feed(("view1", "view2"), state.runtime)
    # One call per step, the step's loss: DDP-wrapped across processes (one forward per backward).
    step_loss = state.parallel if state.parallel is not None else MethodStep(method, state.forward)
    sums, hyper = EpochSums(state.runtime.device), {}
    first, began = _go_on(part, sums, start_step)
    pairs = part.items if part is not None else 0
    for step in range(first, start_step + steps):
        batch = next(batches)
        hyper = method.set_hyper(state.optimizer, step, state.epoch)
        view1, view2 = feed(batch, state.epoch, step)
        with state.runtime.autocast():
            loss = step_loss(view1, view2, state.epoch)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        method.before_update(state.optimizer, state.scaler, state.epoch)
        state.scaler.step(state.optimizer)  # fused optimisers take the scaler's inf check without a sync
        state.scaler.update()
        method.after_update(step, state.epoch)
        sums.add_loss(loss, step)
        sums.fallbacks += _on(batch["fallback"], sums.loss).sum()
        sums.iou += _on(batch["iou"], sums.loss).sum()
        pairs += view1.shape[0]
        if step + 1 < start_step + steps and stopping.due():
            raise StoppedAtStep(EpochPart(step + 1 - start_step, sums.state(), pairs, time.perf_counter() - began,
                                          method.epoch_state()))  # fmt: skip
    totals = sums.read(state.epoch, pairs)
    seconds = time.perf_counter() - began
    pairs = int(totals["items"])  # of every process
    return {
        "loss": totals["loss"] / steps,
        **hyper,
        **mean_numbers_over_ranks(method.collapse(), state.runtime.device),
        "fallback_rate": totals["fallbacks"] / max(1, pairs),
        "mean_iou": totals["iou"] / max(1, pairs),
        "pairs_per_s": pairs / max(seconds, 1e-9),
        "seconds": seconds,
    }


def _go_on(part: EpochPart | None, sums: EpochSums, start_step: int) -> tuple[int, float]:
    """The first step to train and the loop's start time, counting in what a stopped attempt did."""
    if part is None:
        return start_step, time.perf_counter()
    sums.load(part.sums)
    return start_step + part.done, time.perf_counter() - part.seconds


def _on(values: Any, like: Tensor) -> Tensor:
    """A batch's per-pair numbers on the accumulator's device as float64: copied as they are (pinned by the
    loader, so the copy does not wait), converted there."""
    return torch.as_tensor(values).to(like.device, non_blocking=True).double()


def train_one_epoch_seg(
    state: StepState,
    batches: Iterator[dict],
    loss_fn: nn.Module,
    start_step: int,
    steps: int,
    feed: Feed | None = None,
    part: EpochPart | None = None,
) -> dict:
    """``steps`` segmentation updates with Dice + cross-entropy on batches of crops.

    Args:
        start_step: the epoch's first global step.
        feed: puts a batch's ``image`` and ``label`` on the device (augmenting them there in device mode).
        part: the steps of this epoch a stopped attempt did (``batches`` then starts after them).

    Raises:
        StoppedAtStep: a stop became due (``stopping.due``) with steps of the epoch left.
    """
    assert state.schedule is not None, "fine-tuning needs its lr schedule"
    state.model.train()
    feed = feed or _default_feed(("image", "label"), state.runtime)
    sums = EpochSums(state.runtime.device)
    first, began = _go_on(part, sums, start_step)
    crops = part.items if part is not None else 0
    lr = state.schedule(first)
    for step in range(first, start_step + steps):
        batch = next(batches)
        lr = state.schedule(step)
        set_lr(state.optimizer, lr)
        image, label = feed(batch, state.epoch, step)
        with state.runtime.autocast():
            logits = state.forward(image)
        loss = loss_fn(logits.float(), label)  # the loss in fp32: softmax and Dice ratios are precision-sensitive
        _optimise(state, loss)
        sums.add_loss(loss, step)
        crops += image.shape[0]
        if step + 1 < start_step + steps and stopping.due():
            raise StoppedAtStep(EpochPart(step + 1 - start_step, sums.state(), crops, time.perf_counter() - began))
    totals = sums.read(state.epoch, crops)
    seconds = time.perf_counter() - began
    return {
        "loss": totals["loss"] / steps,
        "lr": lr,
        "crops_per_s": totals["items"] / max(seconds, 1e-9),
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
                logits = cast(Tensor, sliding_window_inference(
                    image, (window["roi"],) * 2, window["sw_batch_size"], model, overlap=window["overlap"]
                ))
            logits = logits.float().cpu()
            result.slice_scores.extend(slice_dsc(logits, label, num_classes).tolist())
            pred = logits.argmax(dim=1)
            for i, case in enumerate(batch["case"]):
                result.add_counts(case, pred[i], label[i, 0], num_classes)
    return result
