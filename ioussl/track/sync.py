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

from ioussl.backends.base import Backend, JobInfo, QueryResult, StateTable, backend_for_attempts
from ioussl.errors import IllegalTransition, SubmissionError
from ioussl.registry import repo
from ioussl.registry.models import Attempt, Run
from ioussl.runfiles import RunFileError
from ioussl.status import ACTIVE, RunStatus, check_attempt_transition
from ioussl.track import classify, ingest
from ioussl.track.classify import Change, Observation
from ioussl.track.requeues import job_story


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
    known = _Backends(backends or {}, folder or Path("."))
    answers = _query(runs, known, outcome, prefetched or {})
    observations = [_observe(run, answers, known.states) for run in runs]
    by_id = {run.id: run for run in runs}
    _release_forgotten(runs, observations, known, outcome)
    changes = classify.classify_all(obs for obs in observations if obs is not None)
    for change in changes:
        _apply(session, by_id[change.run_id], change, outcome)
    _cancel_blocked(changes, by_id, known, outcome)
    return outcome


class _Backends:
    """The backends of one sync by executor name: the given ones, others built on demand for their attempts."""

    def __init__(self, given: Mapping[str, Backend], folder: Path) -> None:
        self._known = dict(given)
        self._folder = folder
        self.states: dict[str, StateTable] = {name: backend.states for name, backend in given.items()}

    def __call__(self, executor: str) -> Backend:
        """Raises SubmissionError for an executor no backend is registered for."""
        if executor not in self._known:
            self._known[executor] = backend_for_attempts(executor, self._folder)
            self.states[executor] = self._known[executor].states
        return self._known[executor]


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
    known = _Backends(backends, folder or Path("."))
    for executor, ids in _job_ids(runs).items():
        try:
            prefetched[executor] = (frozenset(ids), known(executor).query(ids))
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
    runs: list[Run], backends: _Backends, outcome: SyncOutcome, prefetched: Prefetched
) -> dict[str, dict[str, JobInfo] | None]:
    """One query per executor; a failed query leaves its runs unobserved (no miss is counted)."""
    answers: dict[str, dict[str, JobInfo] | None] = {}
    for executor, ids in _job_ids(runs).items():
        try:
            backend = backends(executor)
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


def _observe(
    run: Run, answers: dict[str, dict[str, JobInfo] | None], states: Mapping[str, StateTable]
) -> Observation | None:
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
        info=(jobs or {}).get(job_id) if job_id else None,
        files=ingest.read_run_files(run.run_dir, run.study.runs_dir),
        states=states.get(executor or "", classify.NO_STATES),
        now=dt.datetime.now(),  # local and naive, as the scheduler prints its times
    )


def _apply(session: Session, run: Run, change: Change, outcome: SyncOutcome) -> None:
    attempt = _latest(run)
    if attempt is not None and run.status in ACTIVE:
        _update_attempt(attempt, change)
        # The local executor reports no times, and sacct may not yet: the job's own events say when.
        if attempt.started_at is None or attempt.ended_at is None:
            repo.fill_attempt_times(attempt, *ingest.event_times(run.run_dir, since=attempt.submitted_at))
        _note_job_story(attempt, run.run_dir)
    new = RunStatus(change.status) if change.status else None
    reason = change.reason
    if change.ingest:
        new, reason = _ingest(session, run, new, reason)
    if new is None:
        return
    old = RunStatus(run.status)
    moves_attempt = attempt is not None and old in ACTIVE  # the job of an active run: it ends with the run
    try:
        if attempt is not None and moves_attempt:
            check_attempt_transition(RunStatus(attempt.status), new)  # before anything changes
        changed = repo.set_status(session, run, new, reason)
    except IllegalTransition as exc:
        outcome.errors.append(f"run {run.id}: {exc}")
        return
    if attempt is not None and moves_attempt:
        repo.set_attempt_status(attempt, new)
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
    repo.record_misses(attempt, change.misses, change.reason)
    info = change.info
    if info is None:
        return
    repo.record_job_report(
        attempt,
        state=info.raw_state,
        exit_code=f"{info.exit_code}:{info.signal or 0}" if info.exit_code is not None else None,
        node=info.node,
        started_at=_utc(info.start),
        ended_at=_utc(info.end),
    )


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
    backends: _Backends,
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
        if backends(attempt.executor).held_at_submit(obs.info):  # answered, so its backend is known
            held.setdefault(attempt.executor, []).append(obs.info.job_id)
    for executor, job_ids in held.items():
        try:
            backends(executor).release(job_ids)
        except SubmissionError as exc:
            outcome.errors.append(f"could not release held jobs {', '.join(job_ids)}: {exc}")


def _cancel_blocked(
    changes: list[Change],
    runs: dict[str, Run],
    backends: _Backends,
    outcome: SyncOutcome,
) -> None:
    """Cancel the waiting jobs of fine-tunes that just became BLOCKED: never leave them pending forever."""
    by_executor: dict[str, list[str]] = {}
    for change in changes:
        attempt = _latest(runs[change.run_id])
        if change.cancel_job and attempt is not None:
            by_executor.setdefault(attempt.executor, []).append(change.cancel_job)
    for executor, job_ids in by_executor.items():
        try:
            backends(executor).cancel(job_ids)
            outcome.cancelled += job_ids
        except SubmissionError as exc:
            outcome.errors.append(f"could not cancel blocked jobs {', '.join(job_ids)}: {exc}")
