"""What an attempt's job went through, from its own events: requeues (preemption, time limit), world size, hosts.

A requeued job keeps its job id and its attempt (it is the same job, resumed from its checkpoint), so the
registry keeps the requeues in the attempt (``attempts.requeues``), with the reason the job noted
(``submit/requeue.py``). The job's ``started`` events say how many processes it ran (``world_size``) and
on which nodes. Events from run directories are input: anything malformed is skipped, never trusted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ioussl.errors import IousslError
from ioussl.track.ingest import read_events

REASONS = ("preempted", "time limit", "unknown")  # what submit/requeue.py writes
MAX_HOSTS_CHARS = 2000


@dataclass(frozen=True)
class JobStory:
    requeues: list[dict[str, Any]] = field(default_factory=list)  # {"reason", "t"[, "step"]}
    world_size: int | None = None
    hosts: str | None = None


def job_story(run_dir: str | Path, since: dt.datetime) -> JobStory:
    """The requeues, world size and hosts of the job of an attempt submitted at ``since`` (naive UTC)."""
    try:
        events = read_events(Path(run_dir)) if Path(run_dir).is_dir() else []
    except (IousslError, OSError):
        return JobStory()
    floor = since.replace(tzinfo=dt.UTC).timestamp() - 5  # clocks of node and login host may differ a little
    requeues: list[dict[str, Any]] = []
    world_size, hosts = None, None
    started, noted = False, False  # a start seen; a requeue noted since the last start
    for event in events:
        t = event.get("t")
        if not isinstance(t, int | float) or t < floor:
            continue
        if event["event"] == "requeued":
            reason = event.get("reason")
            entry: dict[str, Any] = {"reason": reason if reason in REASONS else "unknown", "t": float(t)}
            if isinstance(event.get("step"), int) and not isinstance(event.get("step"), bool):
                entry["step"] = event["step"]
            requeues.append(entry)
            noted = True
        elif event["event"] == "started":
            if started and not noted:  # started again without a warning: `scontrol requeue`, a node failure
                requeues.append({"reason": "unknown", "t": float(t)})
            started, noted = True, False
            size = event.get("world_size")
            if isinstance(size, int) and not isinstance(size, bool) and 0 < size < 2**31:
                world_size = size
            if isinstance(event.get("hosts"), str):
                hosts = event["hosts"][:MAX_HOSTS_CHARS] or None
    return JobStory(requeues, world_size, hosts)


def requeue_summary(reasons: list[str] | tuple[str, ...]) -> str:
    """``requeued 2x (preempted, time limit)``; empty for none."""
    if not reasons:
        return ""
    return f"requeued {len(reasons)}x ({', '.join(reasons)})"
