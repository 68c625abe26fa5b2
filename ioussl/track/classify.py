"""Pure classification: what the scheduler and a run directory say -> what should change in the registry.

``classify_all`` takes one ``Observation`` per active run (its status, current attempt, the scheduler's
record of that job or None, how often the job was missing before, and what the run directory holds) and
returns ``Change`` objects; ``sync.py`` applies them. No I/O, no registry: tested with tables.

Rules (docs/slurm.md lists them for users):
- every scheduler state maps explicitly, in its backend's table (``Observation.states``, e.g. SLURM's in
  ``backends/slurmtext.py``); COMPLETED counts only with a result.json, since a job that exited 0 without
  its result file did not finish its work;
- a job the scheduler no longer reports becomes LOST only after ``LOST_AFTER_MISSES`` syncs in a row, unless the
  run directory holds an exit marker (result.json -> COMPLETED, a "failed" event -> FAILED, an "interrupted"
  event -> INTERRUPTED, which ``ioussl submit`` resumes);
- a fine-tune whose pretrain ended badly becomes BLOCKED, and a job of it still waiting is cancelled,
  so nothing is left pending forever on a cluster without ``kill_invalid_depend``;
- whether the files of an ended job are valid is decided at ingest (``ingest.py``): sync then marks the
  run INVALID instead.

Statuses are :class:`RunStatus` (``status.py``), the one vocabulary; observations may carry plain strings.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from ioussl.backends.base import JobInfo, JobState, StateTable
from ioussl.status import ACTIVE, DEAD_PARENT, RunStatus

S = RunStatus
PLANNED, SUBMITTING, PENDING, RUNNING = S.PLANNED, S.SUBMITTING, S.PENDING, S.RUNNING
COMPLETED, FAILED, TIMEOUT, CANCELLED = S.COMPLETED, S.FAILED, S.TIMEOUT, S.CANCELLED
BLOCKED, LOST = S.BLOCKED, S.LOST
LOST_AFTER_MISSES = 3
NO_STATES = StateTable("scheduler", {})  # an observation without its backend's table knows no state

@dataclass(frozen=True)
class RunFiles:
    """What the run directory says about how the job ended (see runfiles.py)."""

    has_result: bool = False  # some result.json exists (its validity is decided at ingest)
    last_event: str | None = None  # "started", "requeued", "finished", "failed", ...
    error: str | None = None  # the message of the last "failed" event
    invalid: str | None = None  # why the directory or its events cannot be trusted (one line)


@dataclass(frozen=True)
class Observation:
    """One run as sync sees it; ``info`` is None when the scheduler did not report the job."""

    run_id: str
    status: RunStatus | str
    is_finetune: bool = False
    parent_id: str | None = None
    parent_status: RunStatus | str | None = None  # status of the parent pretrain; None for pretrains and baselines
    job_id: str | None = None
    misses: int = 0
    info: JobInfo | None = None
    files: RunFiles = RunFiles()
    states: StateTable = NO_STATES  # what the job's backend says its states mean
    now: dt.datetime | None = None  # the scheduler's wall clock (local, naive, as sacct prints times)


# A preempted job that SLURM requeues (PreemptMode=REQUEUE) shows PREEMPTED until it starts again, which takes
# the partition's GraceTime, cred_expire (120 s by default) and a scheduler pass; only a job still PREEMPTED
# this long after it ended is taken for one that will not come back.
REQUEUE_WAIT_S = 600


@dataclass(frozen=True)
class Change:
    """What to write: new run status (None = unchanged), attempt fields, a job to cancel, files to ingest."""

    run_id: str
    status: RunStatus | None
    reason: str | None = None
    misses: int = 0
    info: JobInfo | None = None
    cancel_job: str | None = None
    ingest: bool = False


def classify_all(observations: Iterable[Observation]) -> list[Change]:
    """Classify pretrains first, so their fine-tunes see the parent status this very sync decides."""
    observations = list(observations)
    changes: list[Change] = []
    decided: dict[str, RunStatus] = {}
    for obs in sorted(observations, key=lambda o: o.is_finetune):
        if obs.parent_id in decided:
            obs = dataclasses.replace(obs, parent_status=decided[obs.parent_id])
        change = classify(obs)
        if change is not None:
            changes.append(change)
            if change.status is not None:
                decided[obs.run_id] = change.status
    return changes


def classify(obs: Observation) -> Change | None:
    """The change one observation calls for, or None when there is nothing to write."""
    if obs.is_finetune and obs.parent_status in DEAD_PARENT:
        blocked = _blocked(obs)
        if blocked is not None:
            return blocked
    if obs.status not in ACTIVE:
        return None
    if obs.job_id is None:
        return None  # an intent without a job id: adoption (submission.py) resolves it, not sync
    if obs.info is not None:
        return _from_scheduler(obs, obs.info)
    return _from_files_only(obs)


def _blocked(obs: Observation) -> Change | None:
    """A fine-tune of a dead pretrain: block it; cancel its job if the scheduler still holds it queued."""
    meaning = obs.states.meaning(obs.info.state) if obs.info else None
    waiting = obs.info is None or (meaning is not None and meaning.waiting)
    if obs.status == PLANNED or (obs.status in (SUBMITTING, PENDING) and waiting):
        cancel = obs.job_id if meaning is not None and meaning.queued else None
        reason = f"pretrain ended {obs.parent_status}"
        return Change(obs.run_id, BLOCKED, reason=reason, info=obs.info, cancel_job=cancel)
    return None


def _from_scheduler(obs: Observation, info: JobInfo) -> Change | None:
    meaning = obs.states.meaning(info.state)
    if meaning is None:
        return Change(obs.run_id, None, reason=f"unknown {obs.states.scheduler} state {info.raw_state!r}", info=info)
    status = meaning.status
    reason = _reason(info, meaning)
    if meaning.requeueable and (obs.files.last_event == "requeued" or _recent(info.end, obs.now)):
        # The job checkpointed and asked to be requeued (a job that is not requeued notes "failed" after it),
        # or the scheduler requeues it itself: it shows the preempted incarnation until the requeued one starts.
        # It waits; it is not dead, so never FAILED, never an alert, and its fine-tunes' dependency still holds.
        status, reason = PENDING, f"requeued after {info.raw_state}"
    if status == COMPLETED:
        if obs.files.has_result:
            return Change(obs.run_id, COMPLETED, reason=f"job {info.job_id} completed", info=info, ingest=True)
        status, reason = FAILED, "job exited 0 without writing result.json"
    elif status == FAILED and obs.files.error:
        reason = f"{reason}: {obs.files.error}"
    ingest = status in (FAILED, TIMEOUT, CANCELLED)  # keep the metrics a failed run wrote
    new_status = None if status == obs.status else status
    return Change(obs.run_id, new_status, reason=reason, info=info, ingest=ingest)


def _from_files_only(obs: Observation) -> Change:
    """The scheduler no longer knows the job (accounting purged, controller restarted, local process gone)."""
    if obs.files.invalid:
        return Change(obs.run_id, S.INVALID, reason=obs.files.invalid)
    if obs.files.has_result:
        return Change(
            obs.run_id, COMPLETED, reason="finished (result.json; job no longer listed)", ingest=True
        )
    if obs.files.last_event == "failed":
        return Change(obs.run_id, FAILED, reason=obs.files.error or "failed (events.jsonl)", ingest=True)
    if obs.files.last_event == "interrupted":  # Ctrl-C or SIGTERM reached the job: resumable, not lost
        return Change(obs.run_id, S.INTERRUPTED, reason=f"job {obs.job_id} was interrupted (events.jsonl); "
                      "`ioussl submit` resumes it from its last checkpoint", ingest=True)
    misses = obs.misses + 1
    if misses >= LOST_AFTER_MISSES:
        reason = f"job {obs.job_id} vanished from the scheduler ({misses} syncs) without an exit marker"
        return Change(obs.run_id, LOST, reason=reason, misses=misses, ingest=True)
    return Change(obs.run_id, None, reason=None, misses=misses)


def _recent(end: str | None, now: dt.datetime | None) -> bool:
    """Whether a job that ended at ``end`` (SLURM's local time) did so less than REQUEUE_WAIT_S ago."""
    if end is None or now is None:
        return False
    try:
        ended = dt.datetime.fromisoformat(end)
    except ValueError:
        return False
    return (now - ended).total_seconds() < REQUEUE_WAIT_S


def _reason(info: JobInfo, meaning: JobState) -> str | None:
    """A short human reason: the raw state when it says more, plus the exit code or signal."""
    parts = []
    if not meaning.plain:
        parts.append(info.raw_state)
    if info.exit_code:
        parts.append(f"exit code {info.exit_code}")
    if info.signal:
        parts.append(f"signal {info.signal}")
    if meaning.queued and info.reason:
        parts.append(info.reason)
    return ", ".join(parts) or None
