"""Metrics: SimSiam's collapse coefficient, the thesis' per-slice DSC and a 3D DSC on the preprocessed grid.

The thesis scores each validation slice on its own (thesis protocol notes §4): argmax, one-hot over 14
classes, MONAI ``DiceMetric(include_background=True, ignore_empty=True)``, slice score = mean over the
classes present in the ground truth (background included), run score = mean over slices. ``dsc_3d`` is a
3D DSC per case and organ on the preprocessed grid (resampled to 1 x 1 x 2.5 mm, foreground-cropped, the
evaluated slices only), background excluded, an organ absent from both ground truth and prediction scoring
1 and one only predicted 0. It borrows FLARE 2022's empty-organ rule but is not FLARE's evaluation, which
scores the original image grid with organ-specific rules and NSD: that is ``flare_eval.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ioussl.science.distributed import sum_over_ranks, world_size


class CollapseMeter:
    """Mean over an epoch of s = mean_d std_batch(p / ||p||); collapse = max(0, 1 - sqrt(d) s).

    For unit vectors spread uniformly over the sphere each coordinate has std 1/sqrt(d), so the
    coefficient is near 0; a collapsed network outputs one vector, std 0, coefficient 1 (SimSiam §4.1).
    """

    def __init__(self) -> None:
        self.total: Tensor | None = None  # on the outputs' device: no host synchronisation per update
        self.count = 0
        self.dim = 0

    def update(self, p: Tensor) -> None:
        """Add one batch of predictor outputs ``[N, d]``: this process's share of the global batch in a
        multi-GPU job, whose std is taken over the rows of every process (what one process would report)."""
        unit = F.normalize(p.detach().float(), dim=1)
        spread = (unit.std(dim=0) if world_size() == 1 else _std_over_ranks(unit)).mean().double()
        self.total = spread if self.total is None else self.total + spread
        self.count += 1
        self.dim = p.shape[1]

    def state(self) -> dict[str, Any]:
        """The running sum (on the CPU), count and width, for a checkpoint in the middle of an epoch."""
        total = None if self.total is None else self.total.detach().cpu()
        return {"total": total, "count": self.count, "dim": self.dim}

    def load(self, state: dict[str, Any], device: torch.device) -> None:
        total = state["total"]
        self.total = None if total is None else total.to(device)
        self.count, self.dim = int(state["count"]), int(state["dim"])

    def value(self) -> float:
        if self.total is None:
            return float("nan")
        return collapse_coefficient(float(self.total) / self.count, self.dim)


def _std_over_ranks(rows: Tensor) -> Tensor:
    """The per-column sample std of every process's ``rows`` together (one all-reduce of the sums)."""
    sums = sum_over_ranks(torch.cat([rows.sum(dim=0), rows.square().sum(dim=0), rows.new_full((1,), rows.shape[0])]))
    dim = rows.shape[1]
    total, squares, count = sums[:dim], sums[dim : 2 * dim], sums[-1]
    variance = (squares - total.square() / count) / (count - 1)
    return variance.clamp_min(0.0).sqrt()


def collapse_coefficient(mean_std: float, dim: int) -> float:
    return max(0.0, 1.0 - math.sqrt(dim) * mean_std)


def slice_dsc(logits: Tensor, label: Tensor, num_classes: int) -> Tensor:
    """The thesis' DSC of each slice: ``logits [N,C,H,W]``, ``label [N,1,H,W]`` -> ``[N]``.

    Classes absent from a slice's ground truth are ignored (NaN from ``ignore_empty``), even when predicted.
    """
    from monai.metrics import DiceMetric

    pred = F.one_hot(logits.argmax(dim=1), num_classes).permute(0, 3, 1, 2)
    truth = F.one_hot(label[:, 0].long(), num_classes).permute(0, 3, 1, 2)
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    per_class = cast(torch.Tensor, metric(pred, truth))  # [N, C], NaN where the class is absent from the ground truth
    return torch.nanmean(per_class.float(), dim=1)


def preprocessed_case_dsc(counts: np.ndarray, organs: Mapping[int, str]) -> dict[str, float]:
    """3D DSC of one case per organ on the preprocessed grid (``dsc_3d``), background excluded.

    Args:
        counts: ``[3, classes]`` voxel counts summed over the case's slices: |P∩T|, |P|, |T| per class.
            Summing per-slice counts equals stacking the slices into a volume, without holding it.
        organs: class index -> organ name.
    """
    scores = {}
    for index, organ in organs.items():
        inter, pred, truth = (int(v) for v in counts[:, index])
        if truth == 0:
            scores[organ] = 1.0 if pred == 0 else 0.0
        else:
            scores[organ] = 2.0 * inter / (pred + truth)
    return scores


def summarise_cases(per_case: Mapping[str, Mapping[str, float]]) -> tuple[dict[str, float], float]:
    """Per-organ mean over cases and the overall mean over organs."""
    organs = sorted({organ for scores in per_case.values() for organ in scores})
    per_organ = {
        organ: float(np.mean([s[organ] for s in per_case.values() if organ in s])) for organ in organs
    }
    overall = float(np.mean(list(per_organ.values()))) if per_organ else float("nan")
    return per_organ, overall


FLARE_ORGANS: dict[int, str] = {
    1: "liver",
    2: "right_kidney",
    3: "spleen",
    4: "pancreas",
    5: "aorta",
    6: "ivc",
    7: "right_adrenal",
    8: "left_adrenal",
    9: "gallbladder",
    10: "esophagus",
    11: "stomach",
    12: "duodenum",
    13: "left_kidney",
}
