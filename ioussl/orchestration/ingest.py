"""Reading a run directory back into the registry (the only channel from a job, see runfiles.py).

Idempotent: metrics already stored are skipped, a result is replaced by the same result, so a sync may
ingest the same files any number of times.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

from sqlalchemy.orm import Session

from ioussl import runfiles
from ioussl.orchestration.classify import RunFiles
from ioussl.orchestration.registry import repo
from ioussl.orchestration.registry.models import Run

# Keys of a metrics.jsonl line that index it rather than measure something.
INDEX_KEYS = frozenset({"epoch", "step", "t", "time", "stage"})


def read_run_files(run_dir: str | Path) -> RunFiles:
    """What the run directory says about how the job ended, for classify()."""
    run_dir = Path(run_dir)
    last_event, error = None, None
    for event in runfiles.read_jsonl(run_dir / runfiles.EVENTS):
        last_event = event.get("event")
        if last_event == "failed":
            error = str(event.get("error") or event.get("message") or "") or None
    has_result = runfiles.read_json(run_dir / runfiles.RESULT) is not None
    return RunFiles(has_result=has_result, last_event=last_event, error=error)


def event_times(run_dir: str | Path, since: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
    """When the job of an attempt submitted at ``since`` (naive UTC) started and ended, by its own events."""
    start = end = None
    floor = since.replace(tzinfo=dt.UTC).timestamp() - 5  # clocks of node and login host may differ a little
    for event in runfiles.read_jsonl(Path(run_dir) / runfiles.EVENTS):
        t = event.get("t")
        if not isinstance(t, int | float) or t < floor:
            continue
        moment = dt.datetime.fromtimestamp(t, dt.UTC).replace(tzinfo=None)
        if event.get("event") == "started" and start is None:
            start = moment
        elif event.get("event") in ("finished", "failed"):
            end = moment
    return start, end


def metric_points(run_dir: str | Path) -> list[tuple[str, int, int | None, float]]:
    """(name, epoch, step, value) per finite number in metrics.jsonl; lines without an epoch are skipped."""
    points = []
    for line in runfiles.read_jsonl(Path(run_dir) / runfiles.METRICS):
        epoch = line.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            continue
        step = line.get("step") if isinstance(line.get("step"), int) else None
        for name, value in line.items():
            if name in INDEX_KEYS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                points.append((name, epoch, step, float(value)))
    return points


def ingest(session: Session, run: Run) -> bool:
    """Store the run's metrics and, when present, its result; returns whether a result was found."""
    repo.record_metrics(session, run.id, metric_points(run.run_dir))
    result = runfiles.read_json(Path(run.run_dir) / runfiles.RESULT)
    if result is None:
        return False
    repo.record_result(session, run, result, source=str(Path(run.run_dir) / runfiles.RESULT))
    job = result.get("provenance")
    if isinstance(job, dict):
        repo.record_provenance(session, run.id, {
            "git_commit": job.get("git_commit"), "git_dirty": job.get("git_dirty"),
            "packages": {"python": job.get("python"), **(job.get("versions") or {})},
            "host": job.get("host"), "device": str((job.get("device") or {}).get("device_name") or ""),
        })
    return True
