"""Reading a run directory back into the registry (the only channel from a job, see runfiles.py).

Everything a job wrote is input: the run directory must be a real directory inside the study's runs
directory (not a symbolic link, not resolving elsewhere), only regular files are opened, and every file is
validated (``resultcheck``) before anything of the run is stored. A run whose files fail is refused as a
whole with one line naming the file and why (sync marks it INVALID); other runs are unaffected.

Idempotent: metrics already stored are skipped, a result is replaced by the same result, so a sync may
ingest the same files any number of times.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from ioussl import runfiles
from ioussl.config import RunConfig, config_hash, run_hash
from ioussl.errors import ConfigError
from ioussl.plan.expand import job_config_json
from ioussl.registry import repo
from ioussl.registry.models import Run
from ioussl.runfiles import RunFileError
from ioussl.track import resultcheck
from ioussl.track.classify import RunFiles

INDEX_KEYS = resultcheck.INDEX_KEYS


@dataclass(frozen=True)
class RunContent:
    """A run directory's files, validated: metric points, and the result (payload + column values)."""

    metrics: list[tuple[str, int, int | None, float]]
    result: dict[str, Any] | None = None
    columns: dict[str, Any] | None = None


def check_run_dir(run_dir: Path, runs_dir: Path | None) -> bool:
    """Whether the run directory exists; RunFileError when it is not a real directory of this study."""
    try:
        info = os.lstat(run_dir)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise RunFileError("run directory", f"{run_dir} cannot be inspected ({exc.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        raise RunFileError("run directory", f"{run_dir} is a symbolic link (a run directory must be its own)")
    if not stat.S_ISDIR(info.st_mode):
        raise RunFileError("run directory", f"{run_dir} is not a directory")
    if runs_dir is not None and not run_dir.resolve().is_relative_to(Path(runs_dir).resolve()):
        raise RunFileError("run directory", f"{run_dir} resolves outside the study's runs directory {runs_dir}")
    return True


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The validated events of a run (RunFileError on a bad line)."""
    events = runfiles.load_jsonl(run_dir / runfiles.EVENTS)
    for number, event in enumerate(events, start=1):
        resultcheck.check_event(event, f"{runfiles.EVENTS} event {number}")
    return events


def read_run_files(run_dir: str | Path, runs_dir: str | Path | None = None) -> RunFiles:
    """What the run directory says about how the job ended, for classify(); never raises.

    ``has_result`` means some result.json entry exists (whether it is valid is decided at ingest);
    ``invalid`` holds the one-line reason when the directory or its events cannot be trusted.
    """
    run_dir = Path(run_dir)
    try:
        if not check_run_dir(run_dir, Path(runs_dir) if runs_dir else None):
            return RunFiles()
        has_result = os.path.lexists(run_dir / runfiles.RESULT)
        events = read_events(run_dir)
    except RunFileError as exc:
        return RunFiles(has_result=os.path.lexists(run_dir / runfiles.RESULT), invalid=str(exc))
    last_event, error = None, None
    for event in events:
        last_event = event["event"]
        if last_event == "failed":
            error = str(event.get("error") or event.get("message") or "")[:500] or None
    return RunFiles(has_result=has_result, last_event=last_event, error=error)


def event_times(run_dir: str | Path, since: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
    """When the job of an attempt submitted at ``since`` (naive UTC) started and ended, by its own events.

    Unreadable events give (None, None): times are a nicety, never a reason to fail a sync.
    """
    try:
        events = read_events(Path(run_dir)) if Path(run_dir).is_dir() else []
    except RunFileError:
        return None, None
    start = end = None
    floor = since.replace(tzinfo=dt.UTC).timestamp() - 5  # clocks of node and login host may differ a little
    for event in events:
        t = event.get("t")
        if t is None or t < floor:
            continue
        moment = dt.datetime.fromtimestamp(t, dt.UTC).replace(tzinfo=None)
        if event["event"] == "started" and start is None:
            start = moment
        elif event["event"] in ("finished", "failed", "interrupted"):
            end = moment
    return start, end


def metric_points(run_dir: str | Path) -> list[tuple[str, int, int | None, float]]:
    """(name, epoch, step, value) per finite number in metrics.jsonl (RunFileError on a bad line)."""
    lines = runfiles.load_jsonl(Path(run_dir) / runfiles.METRICS, allow_constants=True)
    points = []
    for number, line in enumerate(lines, start=1):
        points += resultcheck.check_metric_line(line, f"{runfiles.METRICS} line {number}")
    return points


def expected_config_hashes(run: Run) -> set[str]:
    """The config hashes a result of this run may carry: of its config as planned and as the job got it."""
    try:
        planned = RunConfig.from_json(run.config)
        handed = RunConfig.from_json(job_config_json(run.config, run.study.base_dir))
    except (ConfigError, ValueError) as exc:
        raise RunFileError("registry config", f"the run's own config cannot be read ({exc})") from None
    return {config_hash(planned), config_hash(handed)}


def expected_run_hashes(run: Run) -> set[str]:
    """The identities a result of this run may carry: its config (as planned or as handed to the job) with its
    parent's identity (as planned, or as the parent's own result recorded it); no parent for pretrains and
    the baseline."""
    planned = RunConfig.from_json(run.config)
    handed = RunConfig.from_json(job_config_json(run.config, run.study.base_dir))
    parents: set[str | None] = {None}
    if run.parent is not None:
        parents = {run.parent.run_hash}
        recorded = run.parent.result.payload.get("run_hash") if run.parent.result is not None else None
        if isinstance(recorded, str):
            parents.add(recorded)
    return {run_hash(config, parent) for config in (planned, handed) for parent in parents}


def load(run: Run) -> RunContent:
    """Every file of the run, validated; RunFileError (one line) on the first problem, before any write."""
    run_dir = Path(run.run_dir)
    if not check_run_dir(run_dir, Path(run.study.runs_dir)):
        return RunContent(metrics=[])
    read_events(run_dir)
    points = metric_points(run_dir)
    payload = runfiles.load_json(run_dir / runfiles.RESULT)
    if payload is None:
        return RunContent(metrics=points)
    columns = resultcheck.check_result(payload, stage=run.stage, config_hashes=expected_config_hashes(run),
                                       run_hashes=expected_run_hashes(run))
    return RunContent(metrics=points, result=payload, columns=columns)


def ingest(session: Session, run: Run) -> bool:
    """Store the run's metrics and, when present, its result; returns whether a result was found.

    Raises:
        RunFileError: a file of the run failed validation; nothing of the run was stored.
    """
    content = load(run)
    repo.record_metrics(session, run.id, content.metrics)
    if content.result is None:
        return False
    source = str(Path(run.run_dir) / runfiles.RESULT)
    repo.record_result(session, run, content.columns or {}, content.result, source=source)
    job = content.result.get("provenance")
    if isinstance(job, dict):
        repo.record_provenance(session, run.id, {
            "git_commit": job.get("git_commit"), "git_dirty": job.get("git_dirty"),
            "packages": {"python": job.get("python"), **(job.get("versions") or {})},
            "host": job.get("host"), "device": str((job.get("device") or {}).get("device_name") or ""),
        })
    return True
