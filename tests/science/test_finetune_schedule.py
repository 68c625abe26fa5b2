"""Fine-tuning's evaluation schedule and early stopping (thesis protocol notes §4)."""

from __future__ import annotations

import dataclasses

from ioussl.config import FinetuneConfig
from ioussl.science.finetune import is_eval_epoch, new_progress, record_evaluation


def test_evaluates_every_tenth_epoch_then_every_epoch_from_90():
    ft = FinetuneConfig()
    epochs = [e for e in range(ft.epochs) if is_eval_epoch(e, ft)]
    assert epochs[:9] == [9, 19, 29, 39, 49, 59, 69, 79, 89]
    assert epochs[9:] == list(range(90, 225))


def test_the_last_epoch_is_always_evaluated():
    ft = dataclasses.replace(FinetuneConfig(), epochs=15)
    assert [e for e in range(15) if is_eval_epoch(e, ft)] == [9, 14]


def test_patience_counts_evaluations_and_needs_strict_improvement():
    progress = new_progress()
    dscs = [0.5, 0.6, 0.6, 0.55, 0.7, 0.69, 0.7, 0.1]
    bests = [record_evaluation(progress, {"dsc": d}, epoch, patience=3) for epoch, d in enumerate(dscs)]
    assert bests == [True, True, False, False, True, False, False, False]
    assert progress["best_dsc"] == 0.7 and progress["best_epoch"] == 4
    assert progress["bad_evals"] == 3 and progress["stopped"] and progress["evals"] == 8


def test_a_zero_score_never_counts_as_an_improvement():
    progress = new_progress()
    assert record_evaluation(progress, {"dsc": 0.0}, 0, patience=20) is False
    assert progress["best"] is None and progress["bad_evals"] == 1
