"""Live progress from the tail of metrics.jsonl: values, rate and ETA, attempts, and files that lie."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

from ioussl.runfiles import RunFileError
from ioussl.track.progress import TAIL_BYTES, read_progress

T0 = 1_700_000_000.0


def line(epoch: int, *, epochs: int = 10, spe: int = 100, started: float = T0, epoch_s: float = 60.0,
         first: int = 0, **extra) -> dict:
    """The metrics line training writes after ``epoch`` (an attempt that began at ``started`` at ``first``)."""
    elapsed = (epoch + 1 - first) * epoch_s
    return {"stage": "pretrain", "epoch": epoch, "epochs": epochs, "step": (epoch + 1) * spe,
            "steps_total": epochs * spe, "time": started + elapsed, "elapsed_s": elapsed, "items_per_s": 250.0,
            "loss": -0.5 - epoch / 100, **extra}


def write(run_dir: Path, lines: list, tail: str = "") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines)
    (run_dir / "metrics.jsonl").write_text(text + tail)
    return run_dir


def test_a_running_pretrain(tmp_path):
    run = write(tmp_path / "runs" / "r1", [line(e) for e in range(3)])
    now = T0 + 3 * 60 + 15  # 15 s after the third epoch's line
    found = read_progress(run, str(tmp_path / "runs"), "pretrain", now)
    assert (found.epoch, found.epochs, found.step, found.steps_total) == (3, 10, 300, 1000)
    assert found.loss == pytest.approx(-0.52) and found.val_dsc is None and found.unit == "pairs/s"
    assert found.items_per_s == 250.0 and found.elapsed_s == pytest.approx(195.0) and found.age_s == 15
    # 100 steps a minute between the first and last line: 700 steps left is 420 s, 15 s of it already gone
    assert found.eta_s == pytest.approx(405.0)


def test_the_eta_counts_at_most_one_epoch_since_the_last_line(tmp_path):
    run = write(tmp_path / "r", [line(e) for e in range(3)])
    late = read_progress(run, None, "pretrain", T0 + 3 * 60 + 3600)  # an hour without a line (a slow epoch)
    assert late.eta_s == pytest.approx(420.0 - 60.0) and late.age_s == 3600


def test_a_resumed_attempt_is_measured_on_its_own_lines(tmp_path):
    earlier = [line(e) for e in range(4)]  # attempt 1: a minute per epoch, then it died after epoch 3
    restart = T0 + 10_000
    resumed = [line(e, started=restart, first=4, epoch_s=30.0) for e in (4, 5)]  # attempt 2: twice as fast
    run = write(tmp_path / "r", [*earlier, *resumed])
    found = read_progress(run, None, "pretrain", restart + 60)
    assert found.epoch == 6 and found.elapsed_s == pytest.approx(60.0)
    assert found.eta_s == pytest.approx(400 / (100 / 30))  # its own rate, not the first attempt's
    single = write(tmp_path / "s", [*earlier, resumed[0]])  # one line so far: its epoch over its elapsed time
    assert read_progress(single, None, "pretrain", restart + 30).eta_s == pytest.approx(500 * 30 / 100)


def test_fine_tuning_shows_the_last_validation_dsc(tmp_path):
    before = line(0, stage="finetune", loss=0.9)
    evaluated = line(1, stage="finetune", val_dsc=0.61, best_dsc=0.61, last_val_dsc=0.61, last_val_epoch=1)
    carried = line(2, stage="finetune", last_val_dsc=0.61, last_val_epoch=1)
    assert read_progress(write(tmp_path / "a", [before]), None, "finetune", T0).val_dsc is None
    found = read_progress(write(tmp_path / "b", [before, evaluated, carried]), None, "finetune", T0 + 180)
    assert found.val_dsc == 0.61 and found.unit == "slices/s"


def test_no_file_and_no_line_are_no_progress(tmp_path):
    assert read_progress(tmp_path / "missing", None, "pretrain", T0) is None
    (tmp_path / "empty").mkdir()
    assert read_progress(tmp_path / "empty", None, "pretrain", T0) is None
    assert read_progress(write(tmp_path / "torn", [], tail='{"epoch": 0, "epo'), None, "pretrain", T0) is None


def test_a_torn_last_line_is_skipped_and_only_the_tail_is_read(tmp_path):
    filler = [line(0, note="x" * 1000) for _ in range(2 * TAIL_BYTES // 1000)]  # older lines past the tail
    run = write(tmp_path / "r", [*filler, line(1), line(2)], tail='{"epoch": 3, "ste')
    found = read_progress(run, None, "pretrain", T0 + 180)
    assert found.epoch == 3 and (run / "metrics.jsonl").stat().st_size > 2 * TAIL_BYTES


@pytest.mark.parametrize(
    ("last", "message"),
    [
        ({**line(0), "epoch": "1"}, "epoch must be an integer"),
        ({**line(0), "epoch": 10}, "do not fit together"),
        ({**line(0), "step": 5000}, "do not fit together"),
        ({**line(0), "epochs": 0}, "epochs 0 is outside"),
        ({**line(0), "time": math.inf}, "time inf is outside"),
        ({**line(0), "elapsed_s": -1}, "elapsed_s -1 is outside"),
        ({**line(0), "items_per_s": "fast"}, "items_per_s must be a number"),
        ({**line(0), "last_val_dsc": 1.5}, "last_val_dsc 1.5 is outside [0, 1]"),
        ({**line(0), "step": True}, "step must be an integer"),
        ("[1, 2]", "epoch must be an integer"),
        ("not json", "epoch must be an integer"),
    ],
)
def test_a_bad_last_line_is_one_line_naming_what_is_wrong(tmp_path, last, message):
    run = write(tmp_path / "r", [line(0), last])
    with pytest.raises(RunFileError, match=re.escape(message)):
        read_progress(run, None, "pretrain", T0)


def test_a_diverging_loss_is_unknown_not_an_error(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(line(0)).replace("-0.5", "NaN") + "\n")
    assert read_progress(run, None, "pretrain", T0 + 60).loss is None


def test_files_that_are_not_regular_are_never_opened(tmp_path):
    runs = tmp_path / "runs"
    fifo = runs / "fifo"
    fifo.mkdir(parents=True)
    os.mkfifo(fifo / "metrics.jsonl")
    with pytest.raises(RunFileError, match="is a FIFO, not a regular file"):
        read_progress(fifo, str(runs), "pretrain", T0)  # would hang if it were opened for reading
    linked = runs / "linked"
    linked.mkdir()
    (linked / "metrics.jsonl").symlink_to(write(tmp_path / "elsewhere", [line(0)]) / "metrics.jsonl")
    with pytest.raises(RunFileError, match="symbolic link"):
        read_progress(linked, str(runs), "pretrain", T0)
    outside = write(tmp_path / "outside", [line(0)])
    (runs / "escape").symlink_to(outside)
    with pytest.raises(RunFileError, match="symbolic link"):
        read_progress(runs / "escape", str(runs), "pretrain", T0)
    with pytest.raises(RunFileError, match="resolves outside the study's runs directory"):
        read_progress(runs / ".." / "outside", str(runs), "pretrain", T0)


def test_the_rate_is_that_of_the_last_epochs(tmp_path):
    slow = [line(e, epochs=40, epoch_s=60.0) for e in range(10)]  # one attempt: 60 s an epoch, then 30 s
    fast = []
    for e in range(10, 30):
        elapsed = 600.0 + (e - 9) * 30.0
        fast.append({**line(e, epochs=40), "time": T0 + elapsed, "elapsed_s": elapsed})
    found = read_progress(write(tmp_path / "r", [*slow, *fast]), None, "pretrain", fast[-1]["time"])
    assert found.eta_s == pytest.approx(10 * 30.0)  # 10 epochs left at the recent 30 s, not the mean 39 s


def test_watch_stops_when_every_run_ended_or_after_an_idle_spell_not_at_one_idle_glance():
    from ioussl.track.progress import StatusView, WatchRule

    def view(active: int, unfinished: int) -> StatusView:
        return StatusView(records=[], total=3, active=active, unfinished=unfinished)

    rule = WatchRule(idle_s=30.0)
    assert not rule.done(view(active=1, unfinished=3), now=100.0)  # something moves: watch it
    assert not rule.done(view(active=0, unfinished=2), now=101.0)  # idle at one glance: a local submit may go on
    assert not rule.done(view(active=0, unfinished=2), now=130.9)
    assert not rule.done(view(active=1, unfinished=2), now=131.5)  # something started: the idle spell resets
    assert not rule.done(view(active=0, unfinished=2), now=140.0)
    assert rule.done(view(active=0, unfinished=2), now=170.0)  # idle for 30 s: nothing moves without a user
    assert WatchRule().done(view(active=0, unfinished=0), now=0.0)  # every run ended: at once
    assert WatchRule().done(view(active=0, unfinished=3), now=0.0)  # nothing moves at the first glance: at once
