"""Status sync: fetch active runs -> query the scheduler once -> classify (pure) -> apply.

``ioussl status`` and ``ioussl submit`` call :func:`sync` inside their unit of work. One scheduler query
per executor covers every active job (one ``sacct`` on SLURM); everything else is registry work and
reading small files in run directories. Jobs never open the registry: what they report comes from the
run directory, ingested here. A run whose files fail validation becomes INVALID (the reason names the
file); its neighbours are ingested all the same, each run in its own savepoint.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ioussl.backends import slurmtext as slurm
from ioussl.backends.base import Backend, backend_for_attempts
from ioussl.backends.slurmcmd import QueryResult
from ioussl.errors import IllegalTransition, SubmissionError
from ioussl.registry import repo
from ioussl.registry.models import Attempt, Run
from ioussl.runfiles import RunFileError
from ioussl.status import ACTIVE, RunStatus
from ioussl.track import classify, ingest
from ioussl.track.classify import Change, Observation
from ioussl.track.requeues import job_story

NODE_CHARS = 255  # attempts.node


@dataclass
class SyncOutcome:
    """What one sync did: which command answered, how many scheduler calls, every status change."""

    source: str = "none"
    calls: int = 0
    checked: int = 0
    transitions: list[tuple[str, str, str, str | None]] = field(default_factory=list)  # run, old, new, why
    cancelled: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: str | None = None  # why this sync wrote nothing (the registry was busy), for the user


BackendFactory = Callable[[str], Backend]


Prefetched = dict[str, tuple[frozenset[str], QueryResult]]  # executor -> (job ids asked, the answer)


def sync(
    session: Session,
    study: str | None = None,
    backends: Mapping[str, Backend] | None = None,
    folder: Path | None = None,
    prefetched: Prefetched | None = None,
) -> SyncOutcome:
    """Bring the registry up to date with the scheduler and the run directories; never commits.

    Args:
        session: an open unit of work (the caller commits).
        study: only this study's runs (by name); None syncs every study.
        backends: executor name -> backend; missing ones are built on demand (tests pass fakes).
        folder: where submitit keeps its job folders (only the local backend reads it).
        prefetched: scheduler answers obtained before the write lock was taken (:func:`prefetch`); an
            executor whose active jobs are not all in it is asked again here.
    """
    outcome = SyncOutcome()
    runs = fetch_active(session, study)
    outcome.checked = len(runs)
    if not runs:
        return outcome
    answers = _query(runs, dict(backends or {}), folder or Path("."), outcome, prefetched or {})
    observations = [_observe(run, answers) for run in runs]
    by_id = {run.id: run for run in runs}
    _release_forgotten(runs, observations, dict(backends or {}), folder or Path("."), outcome)
    changes = classify.classify_all(obs for obs in observations if obs is not None)
    for change in changes:
        _apply(session, by_id[change.run_id], change, outcome)
    _cancel_blocked(changes, by_id, dict(backends or {}), folder or Path("."), outcome)
    return outcome


def fetch_active(session: Session, study: str | None = None) -> list[Run]:
    """Runs the scheduler may hold a job for, and fine-tunes waiting on a pretrain that died."""
    return repo.fetch_active(session, study)


def _latest(run: Run) -> Attempt | None:
    return run.attempts[-1] if run.attempts else None


def prefetch(
    session: Session, study: str | None, backends: Mapping[str, Backend], folder: Path | None = None
) -> Prefetched | None:
    """Ask the scheduler about the active jobs before taking the write lock (in a read-only unit of work),
    so that the lock is held for registry work only, not for sacct. Failed queries are left out.
    None when no run is active: there is nothing to sync, and no need for the write lock."""
    runs = fetch_active(session, study)
    if not runs:
        return None
    prefetched: Prefetched = {}
    for executor, ids in _job_ids(runs).items():
        backend = backends.get(executor) or backend_for_attempts(executor, folder or Path("."))
        try:
            prefetched[executor] = (frozenset(ids), backend.query(ids))
        except SubmissionError:
            continue  # asked again under the lock, where the failure is recorded
    return prefetched


def _job_ids(runs: list[Run]) -> dict[str, list[str]]:
    """Executor -> job ids of the runs' current attempts."""
    job_ids: dict[str, list[str]] = {}
    for run in runs:
        attempt = _latest(run)
        if attempt is not None and attempt.job_id and run.status in ACTIVE:
            job_ids.setdefault(attempt.executor, []).append(attempt.job_id)
    return job_ids


def _query(
    runs: list[Run], backends: dict[str, Backend], folder: Path, outcome: SyncOutcome, prefetched: Prefetched
) -> dict:
    """One query per executor; a failed query leaves its runs unobserved (no miss is counted)."""
    answers: dict[str, dict[str, slurm.JobInfo] | None] = {}
    for executor, ids in _job_ids(runs).items():
        backend = backends.get(executor) or backend_for_attempts(executor, folder)
        try:
            asked, early = prefetched.get(executor, (frozenset(), None))
            result = early if early is not None and set(ids) <= asked else backend.query(ids)
        except SubmissionError as exc:
            outcome.errors.append(str(exc))
            answers[executor] = None
            continue
        answers[executor] = result.jobs
        outcome.calls += result.calls
        outcome.source = result.source if outcome.source == "none" else f"{outcome.source}+{result.source}"
    return answers


def _observe(run: Run, answers: dict) -> Observation | None:
    attempt = _latest(run)
    executor = attempt.executor if attempt else None
    jobs = answers.get(executor) if executor else {}
    if jobs is None and run.status in ACTIVE:
        return None  # the scheduler did not answer: learn nothing rather than count a miss
    job_id = attempt.job_id if attempt else None
    return Observation(
        run_id=run.id,
        status=str(run.status),
        is_finetune=run.stage == "finetune",
        parent_id=run.parent_id,
        parent_status=str(run.parent.status) if run.parent is not None else None,
        job_id=job_id,
        misses=attempt.misses if attempt else 0,
        info=slurm.lookup(jobs or {}, job_id) if job_id else None,
        files=ingest.read_run_files(run.run_dir, run.study.runs_dir),
        now=dt.datetime.now(),  # local and naive, as the scheduler prints its times
    )


def _apply(session: Session, run: Run, change: Change, outcome: SyncOutcome) -> None:
    attempt = _latest(run)
    if attempt is not None and run.status in ACTIVE:
        _update_attempt(attempt, change)
        # The local executor reports no times, and sacct may not yet: the job's own events say when.
        if attempt.started_at is None or attempt.ended_at is None:
            started, ended = ingest.event_times(run.run_dir, since=attempt.submitted_at)
            attempt.started_at = attempt.started_at or started
            attempt.ended_at = attempt.ended_at or ended
        _note_job_story(attempt, run.run_dir)
    new = RunStatus(change.status) if change.status else None
    reason = change.reason
    if change.ingest:
        new, reason = _ingest(session, run, new, reason)
    if new is None:
        return
    old = RunStatus(run.status)
    try:
        changed = repo.set_status(session, run, new, reason)
    except IllegalTransition as exc:
        outcome.errors.append(f"run {run.id}: {exc}")
        return
    if attempt is not None and old in ACTIVE:
        attempt.status = new
    if changed:
        outcome.transitions.append((run.id, str(old), str(new), reason))


def _ingest(
    session: Session, run: Run, new: RunStatus | None, reason: str | None
) -> tuple[RunStatus | None, str | None]:
    """Ingest one run in its own savepoint: bad files make it INVALID and store nothing of it."""
    try:
        with session.begin_nested():
            found = ingest.ingest(session, run)
    except RunFileError as exc:
        return RunStatus.INVALID, str(exc)
    except SQLAlchemyError as exc:  # a value the database refused: the run's files are not stored
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
        return RunStatus.INVALID, f"run files could not be stored: {first}"
    if new == RunStatus.COMPLETED and not found:
        return RunStatus.FAILED, "result.json vanished"
    return new, reason


def _note_job_story(attempt: Attempt, run_dir: str) -> None:
    """Record the job's requeues (preemption, time limit), world size and hosts from its events."""
    story = job_story(run_dir, since=attempt.submitted_at)
    if story.requeues != list(attempt.requeues or []):
        attempt.requeues = story.requeues
    attempt.world_size = story.world_size or attempt.world_size
    attempt.hosts = story.hosts or attempt.hosts


def _update_attempt(attempt: Attempt, change: Change) -> None:
    attempt.misses = change.misses
    if change.reason is not None:
        attempt.reason = change.reason
    info = change.info
    if info is None:
        return
    attempt.scheduler_state = info.raw_state
    if info.exit_code is not None:
        attempt.exit_code = f"{info.exit_code}:{info.signal or 0}"
    attempt.node = (info.node or attempt.node or "")[:NODE_CHARS] or None
    attempt.started_at = _utc(info.start) or attempt.started_at
    attempt.ended_at = _utc(info.end) or attempt.ended_at


def _utc(text: str | None) -> dt.datetime | None:
    """SLURM prints local wall-clock time without a zone; the registry keeps naive UTC."""
    if not text:
        return None
    try:
        local = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return local.astimezone(dt.UTC).replace(tzinfo=None)


def _release_forgotten(
    runs: list[Run],
    observations: list[Observation | None],
    backends: dict[str, Backend],
    folder: Path,
    outcome: SyncOutcome,
) -> None:
    """Release jobs still held from their submission (a submit killed between recording and releasing).

    Only jobs never observed before: a job someone held on purpose later stays held.
    """
    held: dict[str, list[str]] = {}
    for run, obs in zip(runs, observations, strict=True):
        attempt = _latest(run)
        if obs is None or obs.info is None or attempt is None or attempt.scheduler_state is not None:
            continue
        if obs.info.state == "PENDING" and obs.info.reason == slurm.HELD_REASON:
            held.setdefault(attempt.executor, []).append(obs.info.job_id)
    for executor, job_ids in held.items():
        backend = backends.get(executor) or backend_for_attempts(executor, folder)
        try:
            backend.release(job_ids)
        except SubmissionError as exc:
            outcome.errors.append(f"could not release held jobs {', '.join(job_ids)}: {exc}")


def _cancel_blocked(
    changes: list[Change],
    runs: dict[str, Run],
    backends: dict[str, Backend],
    folder: Path,
    outcome: SyncOutcome,
) -> None:
    """Cancel the waiting jobs of fine-tunes that just became BLOCKED: never leave them pending forever."""
    by_executor: dict[str, list[str]] = {}
    for change in changes:
        attempt = _latest(runs[change.run_id])
        if change.cancel_job and attempt is not None:
            by_executor.setdefault(attempt.executor, []).append(change.cancel_job)
    for executor, job_ids in by_executor.items():
        backend = backends.get(executor) or backend_for_attempts(executor, folder)
        try:
            backend.cancel(job_ids)
            outcome.cancelled += job_ids
        except SubmissionError as exc:
            outcome.errors.append(f"could not cancel blocked jobs {', '.join(job_ids)}: {exc}")
