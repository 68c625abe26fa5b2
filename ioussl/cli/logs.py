"""CLI: ``ioussl logs RUN [--follow]``: what a run's job printed, and its events."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer

from ioussl.cli.options import DbOption

if TYPE_CHECKING:
    from ioussl.track.joblogs import EventLog, LogTarget, OutputTail

POLL_S = 1.0  # how often --follow reads the files
SYNC_EVERY_S = 10.0  # how often --follow asks the scheduler whether the run has ended (one sacct)


def logs(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, or a unique prefix of at least 4 characters.")],
    db: DbOption = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing what the job writes until the run has ended "
                                                  "(Ctrl-C stops).")
    ] = False,
) -> None:
    """Print a run's job output (stdout and stderr of its latest attempt, SLURM or local) and its events."""
    from ioussl.track import joblogs

    target = joblogs.find(db, run)
    _header(target)
    events = joblogs.EventLog(target.run_dir, target.runs_dir)
    tails = [joblogs.OutputTail(path) for path in target.outputs]
    printer = _Printer()
    printer.show(events, tails, final=not follow, first=True)
    if not follow:
        return
    try:
        _follow(db, target, events, tails, printer)
    except KeyboardInterrupt:
        _write("\n")


def _follow(db: str | None, target: LogTarget, events: EventLog, tails: list[OutputTail],
            printer: _Printer) -> None:
    """Print new events and output lines until the run has ended; switch files when a new attempt starts."""
    from ioussl.submit.service import sync_studies
    from ioussl.track import joblogs

    synced = time.monotonic()
    while not target.status.is_terminal():
        time.sleep(POLL_S)
        printer.show(events, tails)
        if time.monotonic() - synced < SYNC_EVERY_S:
            continue
        sync_studies(db, target.study)
        synced = time.monotonic()
        latest = joblogs.find(db, target.run_id)
        if (latest.attempt, latest.job_id) != (target.attempt, target.job_id):
            printer.show(events, tails, final=True)
            printer.section(f"attempt {latest.attempt}: {_job(latest)}")
            tails = [joblogs.OutputTail(path) for path in latest.outputs]
            printer.show(events, tails, first=True)
        target = latest
    printer.show(events, tails, final=True)
    _write(f"run {target.run_id} ended: {target.status.value}" + (f" ({target.reason})" if target.reason else "")
           + "\n")


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path as a person reads it: ``jobs/../runs/x`` shown as ``runs/x`` (the file itself is opened as
    recorded; only what is printed is normalised)."""
    return os.path.normpath(path)


def _header(target: LogTarget) -> None:
    lines = [f"run {target.run_id}: {target.stage}, {target.group}, study {target.study}: {target.status.value}"
             + (f" ({target.reason})" if target.reason else ""),
             f"run directory {shown_path(target.run_dir)}"]
    if target.attempt:
        lines.append(f"attempt {target.attempt}: {_job(target)}")
    if target.why_no_output:
        lines.append(f"no job output: {target.why_no_output}")
    _write("\n".join(lines) + "\n")


def _job(target: LogTarget) -> str:
    where = f" on {target.node}" if target.node else ""
    return f"{target.executor} job {target.job_id or '(no id yet)'}{where}"


class _Printer:
    """Prints events and output as they come, naming the source whenever it changes (as ``tail -f``)."""

    def __init__(self) -> None:
        self.source: str | None = None
        self.problems: set[str] = set()

    def section(self, source: str, note: str = "") -> None:
        if source != self.source:
            _write(f"--- {source}{note} ---\n")
            self.source = source

    def show(self, events: EventLog, tails: list[OutputTail], final: bool = False, first: bool = False) -> None:
        fresh = events.new_lines()
        if first and not fresh and events.shown == 0:
            fresh = ["(none yet)"]
        if fresh:
            self.section(f"events ({events.run_dir.name}/events.jsonl)")
            _write("".join(f"{line}\n" for line in fresh))
        for tail in tails:
            self._output(tail, tail.read(final=final), first)

    def _output(self, tail: OutputTail, text: str, first: bool) -> None:
        source = f"job {'stdout' if tail.path.suffix == '.out' else 'stderr'}: {shown_path(tail.path)}"
        if first:
            self.section(source, "" if tail.path.exists() else " (not written yet)")
            if tail.skipped:
                _write(f"({tail.skipped:,} earlier bytes not shown)\n")
        if tail.problem and tail.problem not in self.problems:
            self.problems.add(tail.problem)
            self.section(source)
            _write(f"(unreadable: {tail.problem})\n")
        if text:
            self.section(source)
            _write(text if text.endswith("\n") else text + "\n")


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("logs")(logs)
