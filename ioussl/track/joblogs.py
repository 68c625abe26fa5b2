"""``ioussl logs RUN``: a run's job output (submitit's stdout and stderr files of its latest attempt, SLURM or
local) and its events, once or followed until the run has ended.

Where submitit writes is the backend's to say (``Backend.log_paths``, from submitit's ``JobPaths``): for
example ``<runs_dir>/_submitit/<job id>/<job id>_0_log.out|.err`` for SLURM jobs and array tasks. Job ids
and names come from the registry and are checked by the backend before they become a path, and every file is opened as
run files are (regular files only, inside the study's runs directory). What a job printed is shown without
terminal control sequences: a job's output must not be able to drive the user's terminal.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ioussl import runfiles
from ioussl.backends.base import backend_for_attempts
from ioussl.errors import IousslError
from ioussl.registry import repo, unit_of_work
from ioussl.registry.models import IMPORTED
from ioussl.runfiles import RunFileError
from ioussl.status import RunStatus
from ioussl.track import ingest, resultcheck

FIRST_READ_BYTES = 1 << 20  # of each output file; older output is summarised in one line
FOLLOW_READ_BYTES = 4 << 20  # at most per poll and file
CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")  # CSI, ESC x, C0 (not \t \n)


@dataclass(frozen=True)
class LogTarget:
    """A run and where its latest attempt's job writes."""

    run_id: str
    study: str
    stage: str
    group: str
    status: RunStatus
    reason: str | None
    run_dir: Path
    runs_dir: Path
    attempt: int  # 1-based number of the latest attempt; 0 without one
    executor: str | None = None
    job_id: str | None = None
    node: str | None = None
    outputs: tuple[Path, ...] = ()  # stdout, stderr (they may not exist yet)
    why_no_output: str | None = None


def find(db: str | None, run_ref: str) -> LogTarget:
    """The run (id or unique prefix) and its latest attempt's output files.

    Raises:
        NotFound: no such run (or an ambiguous prefix).
    """
    with unit_of_work(db, write=False) as session:
        run = repo.get_run(session, run_ref)
        attempt = run.attempts[-1] if run.attempts else None
        runs_dir = Path(run.study.runs_dir)
        base = LogTarget(run_id=run.id, study=run.study.name, stage=run.stage, group=run.group,
                         status=RunStatus(run.status), reason=run.status_reason, run_dir=Path(run.run_dir),
                         runs_dir=runs_dir, attempt=len(run.attempts))
        if attempt is None:
            return _replace(base, why_no_output="no job yet: the run was never submitted")
        base = _replace(base, executor=attempt.executor, job_id=attempt.job_id, node=attempt.node)
        outputs, why = output_paths(runs_dir, attempt.executor, attempt.job_id, attempt.job_name)
        return _replace(base, outputs=outputs, why_no_output=why)


def _replace(target: LogTarget, **changes: Any) -> LogTarget:
    import dataclasses

    return dataclasses.replace(target, **changes)


def output_paths(runs_dir: Path, executor: str, job_id: str | None,
                 job_name: str | None) -> tuple[tuple[Path, ...], str | None]:
    """The job's output files as its backend names them (stdout first), or () and why there are none."""
    if executor == IMPORTED:
        return (), "an imported result: no job ran here"
    if not job_id:
        return (), "its job has no id yet (a submission under way or interrupted)"
    try:
        outputs = backend_for_attempts(executor, runs_dir / "_submitit").log_paths(job_id, job_name)
    except IousslError as exc:  # no such backend, or an id or name that names no file of it
        return (), str(exc)
    outside = [path for path in outputs if not path.resolve().is_relative_to(runs_dir.resolve())]
    if outside:
        return (), f"{outside[0].parent} resolves outside the study's runs directory {runs_dir}"
    return outputs, None


@dataclass
class EventLog:
    """The events of a run directory shown so far (events.jsonl only grows while a job runs)."""

    run_dir: Path
    runs_dir: Path
    shown: int = 0

    def new_lines(self) -> list[str]:
        """Events not shown yet, one line each; a line that fails validation is named, not trusted."""
        try:
            if not ingest.check_run_dir(self.run_dir, self.runs_dir):
                return []
            data = runfiles.read_regular(self.run_dir / runfiles.EVENTS, runfiles.MAX_JSONL_BYTES)
        except RunFileError as exc:
            return [f"events unreadable: {exc}"] if self.shown == 0 else []
        pieces = [p for p in (data or b"").decode("utf-8", errors="replace").split("\n")[:-1] if p.strip()]
        lines = [format_event(piece, number) for number, piece in enumerate(pieces, start=1)]
        fresh = lines[self.shown:]
        self.shown = len(lines)
        return fresh


def format_event(piece: str, number: int) -> str:
    """``2024-05-01 12:00:03  started  host=node1 ...`` for one events.jsonl line (checked first)."""
    where = f"{runfiles.EVENTS} line {number}"
    try:
        event = runfiles.parse_json(piece, where)
        if not isinstance(event, dict):
            raise RunFileError(where, "is not a JSON object")
        resultcheck.check_event(event, where)
    except RunFileError as exc:
        return f"(unreadable: {clean(str(exc))})"
    when = "-" if "t" not in event else dt.datetime.fromtimestamp(event["t"]).strftime("%Y-%m-%d %H:%M:%S")
    rest = "  ".join(f"{clean(str(k))[:40]}={_value(v)}" for k, v in event.items() if k not in ("t", "event"))
    return f"{when}  {clean(event['event'])}" + (f"  {rest}" if rest else "")


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    text = clean(text).replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass
class OutputTail:
    """One output file read as it grows: whole lines only, from where the last read stopped."""

    path: Path
    offset: int | None = None  # None: nothing read yet
    pending: bytes = b""
    skipped: int = 0  # bytes before the first read that are not shown
    problem: str | None = None

    def read(self, final: bool = False) -> str:
        """New complete lines (all that is left when ``final``), cleaned for the terminal."""
        first = self.offset is None
        try:
            found = runfiles.read_regular_range(
                self.path, -FIRST_READ_BYTES if first else self.offset or 0,
                FIRST_READ_BYTES if first else FOLLOW_READ_BYTES)
        except RunFileError as exc:
            self.problem = str(exc)
            return ""
        if found is None:
            return ""
        data, start, size = found
        if first:
            self.skipped = start
        elif size < (self.offset or 0):  # truncated or replaced: start over from its beginning
            return self._restart()
        self.offset = start + len(data)
        chunk = self.pending + data
        cut = len(chunk) if final else chunk.rfind(b"\n") + 1
        self.pending = chunk[cut:]
        return clean(chunk[:cut].decode("utf-8", errors="replace"))

    def _restart(self) -> str:
        self.offset, self.pending = 0, b""
        return "(the file was truncated; reading it again from the start)\n" + self.read()


def clean(text: str) -> str:
    """Text as a terminal would leave it, without control sequences: a carriage return keeps what follows
    it (progress bars redraw a line), escape sequences and other control characters are dropped."""
    return "\n".join(CONTROL.sub("", _last_redraw(line)) for line in text.split("\n"))


def _last_redraw(line: str) -> str:
    return line.rstrip("\r").rsplit("\r", 1)[-1]
