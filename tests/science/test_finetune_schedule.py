"""Fine-tuning's evaluation schedule and early stopping (thesis protocol notes §4)."""

from __future__ import annotations

import dataclasses

import pytest

from ioussl.config import FinetuneConfig
from ioussl.errors import TrainingError
from ioussl.science.train.finetune import Selection, is_eval_epoch


def test_evaluates_every_tenth_epoch_then_every_epoch_from_90():
    ft = FinetuneConfig()
    epochs = [e for e in range(ft.epochs) if is_eval_epoch(e, ft)]
    assert epochs[:9] == [9, 19, 29, 39, 49, 59, 69, 79, 89]
    assert epochs[9:] == list(range(90, 225))


def test_the_last_epoch_is_always_evaluated():
    ft = dataclasses.replace(FinetuneConfig(), epochs=15)
    assert [e for e in range(15) if is_eval_epoch(e, ft)] == [9, 14]


def test_patience_counts_evaluations_and_needs_strict_improvement():
    selection = Selection()
    dscs = [0.5, 0.6, 0.6, 0.55, 0.7, 0.69, 0.7, 0.1]
    bests = [selection.record({"dsc": d}, epoch, patience=3) for epoch, d in enumerate(dscs)]
    assert bests == [True, True, False, False, True, False, False, False]
    assert selection.best_dsc == 0.7 and selection.best_epoch == 4
    assert selection.bad_evals == 3 and selection.stopped and selection.evals == 8
    assert selection.last_scores() == {"last_val_dsc": 0.1, "last_val_epoch": 7}


def test_a_zero_score_never_counts_as_an_improvement():
    selection = Selection()
    assert selection.last_scores() == {}
    assert selection.record({"dsc": 0.0}, 0, patience=20) is False
    assert selection.best is None and selection.bad_evals == 1


def test_selection_round_trips_through_a_checkpoint_and_bad_ones_are_refused(tmp_path):
    selection = Selection()
    selection.record({"dsc": 0.4}, 3, patience=5)
    selection.last_epoch, selection.step = 3, 12
    payload = {"progress": selection.to_dict(), "step": 12}
    assert Selection.from_checkpoint(payload, tmp_path, payload["step"]) == selection
    assert Selection.from_checkpoint({}, tmp_path, 0) == Selection()
    with pytest.raises(TrainingError, match="lacks the selection progress"):
        Selection.from_checkpoint({"progress": {"best_dsc": 0.4}, "step": 12}, tmp_path, 12)
    with pytest.raises(TrainingError, match="inconsistent progress"):
        Selection.from_checkpoint({"progress": selection.to_dict(), "step": 13}, tmp_path, 13)
