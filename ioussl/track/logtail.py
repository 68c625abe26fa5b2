"""The last lines a run's job printed, for the HTML report's run details (``ioussl report --html``).

The same files and checks as ``ioussl logs`` (:mod:`ioussl.track.joblogs`): the latest attempt's output,
read only as regular files inside the study's runs directory, cleaned of terminal control sequences; where
a run has no output file yet, its last events stand in. Reading is capped (lines per run, runs per report)
so a sweep of thousands of runs still reports in seconds.
"""

from __future__ import annotations

from collections.abc import Callable

from ioussl.registry.repo import RunRecord
from ioussl.status import RunStatus
from ioussl.track import joblogs

LINES = 15  # per run
MAX_RUNS = 300  # submitted runs whose files are read for one report (the first ones in the table's order)

Tail = Callable[[RunRecord], tuple[list[str], str]]


def reader(db: str | None, lines: int = LINES, max_runs: int = MAX_RUNS) -> Tail:
    """A function giving a run's last ``lines`` output lines and a note saying where they come from."""
    read = 0

    def tail(record: RunRecord) -> tuple[list[str], str]:
        nonlocal read
        if record.status == RunStatus.PLANNED:
            return [], "never submitted: no output"
        if read >= max_runs:
            return [], f"not read: the report reads the output of {max_runs} runs at most (see ioussl logs {record.id})"
        read += 1
        return last_lines(db, record.id, lines)

    return tail


def last_lines(db: str | None, run_id: str, lines: int = LINES) -> tuple[list[str], str]:
    """The last ``lines`` lines of the run's latest job output (else of its events), and where they are from."""
    target = joblogs.find(db, run_id)
    for path in target.outputs:
        tail = joblogs.OutputTail(path)
        text = tail.read(final=True)
        kept = [line for line in text.rstrip("\n").split("\n") if line.strip()][-lines:]
        if kept:
            return kept, f"from {path}"
        if tail.problem:
            return [], f"output unreadable: {tail.problem}"
    events = joblogs.EventLog(target.run_dir, target.runs_dir).new_lines()[-lines:]
    if events:
        why = target.why_no_output or "the job's output file is empty or missing"
        return events, f"its last events ({why})"
    return [], target.why_no_output or "no output yet"
