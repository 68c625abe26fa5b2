"""The thesis' per-slice DSC and the per-case 3D DSC on the preprocessed grid (``dsc_3d``); FLARE 2022's own
evaluation on the original grid is tested in test_flare_eval.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ioussl.science.evaluate.metrics import FLARE_ORGANS, preprocessed_case_dsc, slice_dsc, summarise_cases
from ioussl.science.train.engine import Evaluation


def _logits(pred: torch.Tensor, classes: int = 14) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, classes).permute(0, 3, 1, 2).float()


def test_slice_dsc_ignores_classes_absent_from_the_ground_truth():
    label = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    label[0, 0, :4] = 1  # liver on the top half
    pred = label[:, 0].clone()
    assert slice_dsc(_logits(pred), label, 14).tolist() == [1.0]
    pred[0, 6:, :] = 3  # a spleen that is not there: only the background Dice pays
    bg = 2 * 16 / (32 + 16)  # background: 32 true, 16 predicted, 16 overlap
    assert slice_dsc(_logits(pred), label, 14).item() == pytest.approx((bg + 1.0) / 2)


def test_organ_free_slice_scores_its_background_only():
    label = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    assert slice_dsc(_logits(torch.zeros(1, 8, 8, dtype=torch.long)), label, 14).item() == 1.0


def test_preprocessed_3d_dsc_from_slice_counts_equals_the_stacked_volume():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (5, 16, 16))
    pred = np.where(rng.random((5, 16, 16)) < 0.7, truth, rng.integers(0, 5, (5, 16, 16)))
    evaluation = Evaluation()
    for z in range(5):  # slice by slice, as validation runs
        evaluation.add_counts("c1", torch.from_numpy(pred[z]), torch.from_numpy(truth[z]), 14)
    scores = preprocessed_case_dsc(evaluation.counts["c1"], FLARE_ORGANS)
    for index, organ in FLARE_ORGANS.items():
        p, t = pred == index, truth == index
        if t.sum() == 0:
            expected = 1.0 if p.sum() == 0 else 0.0
        else:
            expected = 2 * (p & t).sum() / (p.sum() + t.sum())
        assert scores[organ] == pytest.approx(expected), organ
    assert scores["pancreas"] == 0.0  # class 4 predicted but absent: counted as 0 (FLARE's empty-organ rule)
    assert scores["liver"] < 1.0 and scores["esophagus"] == 1.0


def test_summary_averages_organs_over_cases():
    per_organ, overall = summarise_cases(
        {"a": {"liver": 1.0, "spleen": 0.5}, "b": {"liver": 0.5, "spleen": 0.5}}
    )
    assert per_organ == {"liver": 0.75, "spleen": 0.5}
    assert overall == pytest.approx(0.625)
