"""Live progress of running runs, read from the tail of their ``metrics.jsonl`` (never from the registry).

Training appends one line per epoch (``science/train/progress.py``): ``epoch`` (0-based), ``epochs``, ``step``,
``steps_total``, ``time``, ``elapsed_s`` (since its attempt started), ``items_per_s`` and ``loss``, or, when
fine-tuning, ``last_val_dsc`` once an evaluation happened. ``ioussl status`` shows them for RUNNING runs
only, so a registry of 10,000 runs costs one small read per running job, not one per run.

These lines are input: only the last ``TAIL_BYTES`` of a regular file inside the study's runs directory
are read (``ingest.check_run_dir``, ``runfiles.read_regular_range``), and every value that is shown is
checked (integers in range, finite numbers, a DSC in [0, 1]). A run whose line fails gets no live columns
and one line saying why; its status is untouched (ingest decides validity when the job ends).

The ETA is the remaining steps over the step rate of the current attempt's last ``RATE_LINES`` epochs (the
lines of one attempt share ``time - elapsed_s``), less the time since the last line, at most one epoch's
worth of it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ioussl import runfiles
from ioussl.registry import repo, unit_of_work
from ioussl.runfiles import RunFileError
from ioussl.status import ACTIVE, RunStatus
from ioussl.track import ingest, resultcheck
from ioussl.track.listing import status_records

TAIL_BYTES = 64 << 10  # ~200 epoch lines: enough to see the current attempt's rate
RATE_LINES = 20  # the ETA uses the step rate over (at most) the last 20 epochs of the current attempt
SAME_ATTEMPT_S = 5.0  # lines whose attempt start (time - elapsed_s) differ by more belong to another attempt


@dataclass(frozen=True)
class LiveProgress:
    """Where a running run stands, from its last metrics line (``epoch`` counts finished epochs)."""

    stage: str
    epoch: int
    epochs: int
    step: int
    steps_total: int
    loss: float | None
    val_dsc: float | None  # fine-tuning: the last validation DSC (None before the first evaluation)
    items_per_s: float | None  # pairs/s (pretraining) or slices/s (fine-tuning)
    elapsed_s: float  # this attempt, up to now
    eta_s: float | None
    age_s: float  # since the last line was written

    @property
    def unit(self) -> str:
        return "pairs/s" if self.stage == "pretrain" else "slices/s"

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "epochs": self.epochs, "step": self.step, "steps_total": self.steps_total,
                "loss": self.loss, "val_dsc": self.val_dsc, "items_per_s": self.items_per_s, "unit": self.unit,
                "elapsed_s": round(self.elapsed_s, 1), "eta_s": None if self.eta_s is None else round(self.eta_s),
                "age_s": round(self.age_s, 1)}


@dataclass
class StatusView:
    """What ``ioussl status`` shows: the runs, live progress of the running ones, and what waits for a user."""

    records: list[repo.RunRecord]
    live: dict[str, LiveProgress] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # one line per running run without live columns
    waiting: list[str] = field(default_factory=list)  # fine-tunes whose pretrain completed, never submitted
    total: int = 0  # runs in scope (study, stage, group), whatever --state shows
    unfinished: int = 0  # of those, not in an end state
    active: int = 0  # of those, submitting, pending or running


WATCH_IDLE_S = 30.0  # --watch stops when nothing was queued or running for this long (and runs remain planned)


@dataclass
class WatchRule:
    """When ``ioussl status --watch`` stops redrawing: every run in view has ended; nothing is queued or running
    at the first glance (there is nothing to watch: the runs wait for ``ioussl submit``); or, once something
    was, nothing has been for ``idle_s`` while runs remain. Idle for a while, not at one later glance: a local
    submit may be about to start its next run."""

    idle_s: float = WATCH_IDLE_S
    idle_since: float | None = None  # monotonic time since which nothing was active
    glances: int = 0

    def done(self, view: StatusView, now: float) -> bool:
        """Whether to stop after showing ``view`` (``now``: ``time.monotonic()``)."""
        self.glances += 1
        if view.unfinished == 0 or (self.glances == 1 and not view.active):
            return True
        self.idle_since = None if view.active else (now if self.idle_since is None else self.idle_since)
        return self.idle_since is not None and now - self.idle_since >= self.idle_s


def status_view(db: str | None, study: str | None = None, stage: str | None = None,
                statuses: Sequence[RunStatus] | None = None, group: str | None = None,
                now: float | None = None) -> StatusView:
    """The registry's runs (in report group order) and the live progress of those running (from files)."""
    with unit_of_work(db, write=False) as session:
        records = status_records(session, study=study, stage=stage, group=group)  # --state applies below
        runs_dirs = repo.study_runs_dirs(session)
        waiting = repo.waiting_for_submit(session, study=study, group=group) if stage != "pretrain" else []
    view = StatusView(records=[], waiting=waiting, total=len(records))
    view.unfinished = sum(not r.status.is_terminal() or r.status.awaits_submit() for r in records)
    view.active = sum(r.status in ACTIVE for r in records)
    wanted = set(statuses or ())
    view.records = [r for r in records if not wanted or r.status in wanted]
    view.live, view.problems = live_progress(view.records, runs_dirs, time.time() if now is None else now)
    return view


def live_progress(records: Sequence[repo.RunRecord], runs_dirs: Mapping[str, str],
                  now: float) -> tuple[dict[str, LiveProgress], list[str]]:
    """Live progress of the RUNNING records (run id -> progress), and one line per run that has none."""
    live, problems = {}, []
    for record in records:
        if record.status != RunStatus.RUNNING:
            continue
        try:
            found = read_progress(Path(record.run_dir), runs_dirs.get(record.study), record.stage, now)
        except RunFileError as exc:
            problems.append(f"run {record.id}: no live progress: {exc}")
            continue
        if found is not None:
            live[record.id] = found
    return live, problems


def read_progress(run_dir: Path, runs_dir: str | None, stage: str, now: float) -> LiveProgress | None:
    """The progress in ``run_dir/metrics.jsonl``; None before its first line.

    Raises:
        RunFileError: the run directory or the file cannot be trusted, or its last line is not a sane one.
    """
    if not ingest.check_run_dir(run_dir, Path(runs_dir) if runs_dir else None):
        return None
    found = runfiles.read_regular_range(run_dir / runfiles.METRICS, -TAIL_BYTES, TAIL_BYTES)
    if found is None:
        return None
    lines = _complete_lines(*found)
    if not lines:
        return None
    attempt = _current_attempt(lines)
    return _progress(attempt, stage, now)


def _complete_lines(data: bytes, offset: int, size: int) -> list[dict[str, Any]]:
    """The last ``RATE_LINES`` whole JSON lines of a tail (a partial first line, a torn last one and blank
    lines dropped)."""
    pieces = data.decode("utf-8", errors="replace").split("\n")[:-1]  # the last piece has no newline
    if offset > 0 and pieces:
        pieces = pieces[1:]  # the tail began mid-line
    lines = []
    for piece in [p for p in pieces if p.strip()][-RATE_LINES:]:
        try:
            value = json.loads(piece)
        except (ValueError, RecursionError):
            value = None
        lines.append(value if isinstance(value, dict) else {})  # {} fails the checks if it is the last one
    return lines


def _current_attempt(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checked lines written by the attempt that wrote the last one (oldest first)."""
    last = check_line(lines[-1])
    began = last["time"] - last["elapsed_s"]
    attempt = [last]
    for line in reversed(lines[:-1]):
        try:
            line = check_line(line)
        except RunFileError:
            break  # an older bad line only shortens the window the rate is measured over
        if abs(line["time"] - line["elapsed_s"] - began) > SAME_ATTEMPT_S or line["step"] > attempt[0]["step"]:
            break
        attempt.insert(0, line)
    return attempt


def check_line(line: Mapping[str, Any]) -> dict[str, Any]:
    """The values of one metrics line that live status shows, checked (RunFileError: what is wrong)."""
    where = f"{runfiles.METRICS} last line"
    checked: dict[str, Any] = {name: resultcheck.count(line, name, name=where)
                               for name in ("epoch", "step", "steps_total")}
    checked["epochs"] = resultcheck.count(line, "epochs", 1, name=where)
    if checked["epoch"] >= checked["epochs"] or checked["step"] > checked["steps_total"]:
        raise RunFileError(where, f"epoch {checked['epoch']} of {checked['epochs']}, step {checked['step']} "
                                  f"of {checked['steps_total']} do not fit together")
    checked["time"] = _number(line, "time", where, hi=resultcheck.MAX_EPOCH_TIME)
    checked["elapsed_s"] = _number(line, "elapsed_s", where, hi=resultcheck.MAX_EPOCH_TIME)
    for name, hi in (("items_per_s", math.inf), ("loss", math.inf), ("val_dsc", 1.0), ("last_val_dsc", 1.0)):
        checked[name] = _number(line, name, where, hi=hi, optional=True, lo=-math.inf if name == "loss" else 0.0)
    return checked


def _number(line: Mapping[str, Any], name: str, where: str, *, lo: float = 0.0, hi: float,
            optional: bool = False) -> float | None:
    value = line.get(name)
    if value is None and optional:
        return None
    if not resultcheck.is_number(value):
        raise RunFileError(where, f"{name} must be a number, got {_show(value)}")
    number = resultcheck.to_float(value)
    if not (math.isfinite(number) and lo <= number <= hi):
        if optional and name == "loss" and not math.isfinite(number):
            return None  # a diverging loss is shown as unknown; the job itself fails on it
        raise RunFileError(where, f"{name} {_show(value)} is outside [{lo:g}, {hi:g}]")
    return number


def _progress(attempt: list[dict[str, Any]], stage: str, now: float) -> LiveProgress:
    last = attempt[-1]
    age = max(0.0, now - last["time"])
    steps_per_epoch = last["steps_total"] / last["epochs"]
    rate = _step_rate(attempt, steps_per_epoch)
    eta = None
    if rate:
        remaining = (last["steps_total"] - last["step"]) / rate
        eta = max(0.0, remaining - min(age, steps_per_epoch / rate))
    return LiveProgress(
        stage=stage, epoch=last["epoch"] + 1, epochs=last["epochs"], step=last["step"],
        steps_total=last["steps_total"], loss=last["loss"],
        val_dsc=_last_dsc(last) if stage == "finetune" else None, items_per_s=last["items_per_s"],
        elapsed_s=last["elapsed_s"] + age, eta_s=eta, age_s=age,
    )


def _last_dsc(line: dict[str, Any]) -> float | None:
    return line["last_val_dsc"] if line["last_val_dsc"] is not None else line["val_dsc"]


def _step_rate(attempt: list[dict[str, Any]], steps_per_epoch: float) -> float | None:
    """Steps per second of the current attempt: between its first and last line, or over its one epoch."""
    first, last = attempt[0], attempt[-1]
    if len(attempt) > 1 and last["time"] > first["time"] and last["step"] > first["step"]:
        return (last["step"] - first["step"]) / (last["time"] - first["time"])
    if last["elapsed_s"] > 0 and steps_per_epoch > 0:
        return steps_per_epoch / last["elapsed_s"]  # one epoch so far (start-up included: a little slow)
    return None


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
