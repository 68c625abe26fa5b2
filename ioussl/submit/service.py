"""The services behind ``ioussl submit``, ``retry`` and ``cancel``: one short unit of work per step.

Every step commits on its own (intent, then sbatch, then job ids), so a crash at any point leaves the
registry in a state the next command repairs (see submission.py). Each command first adopts orphaned
intents and syncs, so it decides on fresh statuses.

Writers wait up to $IOUSSL_DB_TIMEOUT for the registry's write lock; ``ioussl status`` waits only
``STATUS_LOCK_WAIT_S`` and, when another process is writing, shows what is recorded and says that its
ingest was skipped (:func:`sync_studies`). Folders that hold what jobs execute (run directories,
``_submitit/``) are created without group or world write, whatever the umask.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ioussl import runfiles
from ioussl.backends.base import Backend, Unit, backend_for_attempts, choose_backend, resolve_executor
from ioussl.errors import ConfigError, Interrupted, NotFound, SubmissionError
from ioussl.plan import expand as planning
from ioussl.plan.order import order_groups
from ioussl.registry import opened, repo
from ioussl.registry.db import Registry
from ioussl.registry.errors import RegistryBusy
from ioussl.registry.models import Run, utcnow
from ioussl.resources import placeholder_message, placeholders, resources_for_run
from ioussl.status import ACTIVE, DEFAULT_RETRY, RunStatus, is_retryable
from ioussl.submit import submission, throttle
from ioussl.submit.interrupts import StopRequest, interrupt_local, resume_interrupted
from ioussl.submit.submission import JobFactory, RunFilter, SubmitOutcome
from ioussl.track import alerts
from ioussl.track.sync import SyncOutcome, prefetch, sync

S = RunStatus
Progress = Callable[[list[repo.RunRecord]], None]
LOCAL_POLL_S = 1.0
ENDED_BADLY = frozenset({S.FAILED, S.TIMEOUT, S.LOST, S.INVALID})  # a local submit then exits 1
ALERT_RETRY_S = 60.0  # the local loop retries failed webhook deliveries this often (new alerts go at once)
STATUS_LOCK_WAIT_S = 2.0  # `ioussl status` waits this long for the write lock, then shows what is recorded


class Backends(dict):
    """Executor name -> backend, built on demand for attempts of another executor."""

    def __init__(self, folder: Path, *given: Backend) -> None:
        super().__init__({b.name: b for b in given})
        self.folder = folder

    def __call__(self, executor: str) -> Backend:
        if executor not in self:
            self[executor] = backend_for_attempts(executor, self.folder)
        return self[executor]


def submit(
    db: str | None,
    study: str | None = None,
    *,
    executor: str = "auto",
    dry_run: bool = False,
    run_filter: RunFilter = RunFilter(),
    max_parallel: int | None = None,
    factory: JobFactory | None = None,
    backend: Backend | None = None,
    progress: Progress | None = None,
    stop: StopRequest | None = None,
    command: str = "submit",
) -> SubmitOutcome:
    """Submit every planned run of the study (that the filter keeps) whose pretrain can still deliver;
    interrupted runs are resumed.

    ``progress``: called with the study's runs on every round of the local executor's loop (a progress bar).
    ``stop``: checked between steps (Ctrl-C, SIGTERM: :mod:`ioussl.submit.interrupts`); once set, no job is
    started any more, the local executor's running jobs are stopped and recorded INTERRUPTED, and
    :class:`~ioussl.errors.Interrupted` says so.
    """
    with opened(db) as registry:
        name, folder = _study_folder(registry, study)
        executor, fell_back = (backend.name, None) if backend else resolve_executor(executor)
        backend = backend or choose_backend(executor, folder)
        backends = Backends(folder, backend)
        outcome = SubmitOutcome(study=name, executor=backend.name, dry_run=dry_run, fell_back=fell_back)
        if not dry_run:
            prepare(registry, name, backends, outcome)
            outcome.resumed = resume_interrupted(registry, name, run_filter)
        units = _plan(registry, name, run_filter, outcome)
        if backend.uses_cluster_profile:
            _refuse_placeholders(registry, name, units)
        if dry_run or not units:
            _describe_dependencies(backend, units, outcome)
            return outcome
        factory = factory or submission.default_job_factory()
        if not backend.supports_dependencies:  # ioussl sequences pretrain -> fine-tunes itself
            _run_local(registry, name, backend, run_filter, max_parallel, factory, outcome, progress, stop,
                       command)
        else:
            for done, unit in enumerate(units):
                if stop is not None and stop.is_set():
                    raise Interrupted(f"stopped by {stop.signal_name} during `ioussl {command}` after {done} of "
                                      f"{len(units)} job(s) submitted; `ioussl submit` submits the rest")
                submit_unit(registry, backend, unit, factory, outcome)
        return outcome


def prepare(registry: Registry, study: str, backends: Backends, outcome: SubmitOutcome | None = None,
            wait: float | None = None) -> SyncOutcome:
    """Adopt or revert intents left by a killed submit, then sync: decisions then rest on fresh statuses.

    ``wait``: seconds to wait for the write lock (default $IOUSSL_DB_TIMEOUT); RegistryBusy after that.
    """

    def adopt_once() -> int:
        with registry.session(write=False) as session:
            if not repo.open_intents(session):
                return 0  # the usual case: no interrupted submit, no need for the write lock
        with registry.session(wait=wait) as session:
            adopted, reverted, young = submission.adopt_orphans(session, backends)
        if outcome is not None:
            outcome.adopted += adopted
            outcome.reverted += reverted
        return young

    submission.wait_for_young_intents(adopt_once)
    with registry.session(write=False) as session:  # the scheduler is asked before the write lock is taken
        answers = prefetch(session, study, backends, backends.folder)
        alerts_due = answers is None and repo.has_unsent_notifications(session, study)
    if answers is None:  # no active run: nothing to write, unless alerts wait for a retry
        quiet = SyncOutcome()
        if alerts_due:
            quiet.errors += _retry_alerts(registry, study, wait)
        return quiet
    with registry.session(wait=wait) as session:
        synced = sync(session, study=study, backends=backends, folder=backends.folder, prefetched=answers)
        deliveries = _alerts_after(session, study, synced)
    synced.errors += alerts.send(registry, deliveries)  # after the commit: no lock held while POSTing
    return synced


def _alerts_after(session, study: str, outcome: SyncOutcome, retry: bool = True) -> list[alerts.Delivery]:
    """Inside the sync's unit of work: queue this sync's alerts, claim what to send (``retry``: also those
    whose delivery failed before)."""
    queued = alerts.queue(session, study, outcome.transitions)
    return alerts.claim(session, study, fresh_only=not retry) if queued or retry else []


def _retry_alerts(registry: Registry, study: str, wait: float | None) -> list[str]:
    """Send alerts that an earlier sync could not deliver (a study with nothing active to sync)."""
    try:
        with registry.session(wait=wait) as session:
            deliveries = alerts.claim(session, study)
    except RegistryBusy:
        return []  # another process writes; the next sync tries
    return alerts.send(registry, deliveries)


def _refuse_placeholders(registry: Registry, study: str, units: Sequence[Unit]) -> None:
    """SLURM would reject a template value such as account FILL-IN-YOUR-GRANT: say which and where first."""
    found: dict[str, str] = {}
    for unit in units:
        found.update(placeholders(unit.resources))
    if found:
        with registry.session() as session:
            source = planning.profile_source(repo.find_study(session, study).spec.get("raw") or {})
        message = placeholder_message(found, f"study {study!r}, {source}")
        raise ConfigError(f"{message}, then run `ioussl plan grid` again (planned runs pick it up)")


def _study_folder(registry: Registry, study: str | None) -> tuple[str, Path]:
    """The study to act on (the only one if not named) and its submitit folder."""
    with registry.session(write=False) as session:
        row = submission.find_submit_study(session, study)
        return row.name, Path(row.runs_dir) / "_submitit"


def sync_studies(db: str | None, study: str | None = None,
                 wait: float | None = STATUS_LOCK_WAIT_S) -> list[SyncOutcome]:
    """Adopt orphans, query the scheduler once per study, apply transitions and ingest run files.

    Read-mostly: when another process holds the write lock longer than ``wait`` seconds, the study's
    outcome says so (``skipped``) and nothing is ingested; the caller shows what is recorded.
    """
    with opened(db) as registry:
        with registry.session(write=False) as session:
            if study is not None:
                repo.find_study(session, study)
            studies = [(s.name, s.runs_dir) for s in repo.list_studies(session, study)]
        outcomes = []
        for name, runs_dir in studies:
            try:
                outcomes.append(prepare(registry, name, Backends(Path(runs_dir) / "_submitit"), wait=wait))
            except RegistryBusy:
                outcomes.append(SyncOutcome(skipped=f"another ioussl is writing to the registry: ingest of study "
                                                    f"{name} skipped, showing what is recorded"))
        return outcomes


def _plan(registry: Registry, study: str, run_filter: RunFilter, outcome: SubmitOutcome) -> list[Unit]:
    with registry.session() as session:
        wanted = {repo.get_run(session, run_id).id for run_id in run_filter.run_ids}
        units = submission.plan_units(repo.study_runs(session, study), run_filter, wanted, outcome)
    outcome.units = units
    return units


def _describe_dependencies(backend: Backend, units: Sequence[Unit], outcome: SubmitOutcome) -> None:
    """For --dry-run: what each unit would wait for (a pretrain in this submit has no job id yet), and
    what the backend would be handed for it."""
    in_batch = {unit.run_ids[0] for unit in units if unit.stage == "pretrain"}
    for unit in units:
        if unit.parent_id is None:
            outcome.dependencies[unit.job_name] = None
        elif unit.parent_id in in_batch:
            outcome.dependencies[unit.job_name] = backend.after(f"<job of ioussl-{unit.parent_id}>")
        else:
            current = backend.after(f"<current job of {unit.parent_id}>")
            outcome.dependencies[unit.job_name] = f"{current} (or none if done)"
        outcome.commands[unit.job_name] = backend.describe(
            unit, backend.after("<pretrain job>") if unit.parent_id else None
        )


def submit_unit(registry: Registry, backend: Backend, unit: Unit, factory: JobFactory, outcome: SubmitOutcome) -> None:
    """Intent (committed) -> sbatch -> job ids (committed). A rejected sbatch leaves the runs PLANNED."""
    with registry.session() as session:
        parent_job, ready = submission.waits_for(session, unit)
        if not ready:
            outcome.skipped += [(run_id, "its pretrain has no job id yet") for run_id in unit.run_ids]
            return
        runs = [repo.get_run(session, run_id) for run_id in unit.run_ids]
        submission.check_job_strings(unit, runs, parent_job)
        runfiles.make_private_dir(Path(runs[0].study.runs_dir) / "_submitit")
        submission.write_run_files(runs)
        calls = submission.job_calls(session, unit, factory)
        submission.record_intent(session, unit, backend.name, parent_job, arrays=backend.supports_arrays)
    dependency = backend.after(parent_job) if parent_job is not None else None
    try:
        with runfiles.private_dirs():  # submitit's folders and pickles, and the umask the job inherits
            job_ids = backend.submit(unit, calls, dependency)
    except (SubmissionError, ConfigError) as exc:  # refused by the scheduler, or by the backend's last check
        with registry.session() as session:
            submission.record_rejection(session, unit, str(exc))
        raise
    outcome.sbatch_calls += 1 if backend.supports_arrays else len(calls)
    outcome.dependencies[unit.job_name] = dependency
    with registry.session() as session:
        outcome.job_ids.update(submission.record_jobs(session, unit, job_ids))
    backend.release(job_ids)  # recorded and stored by submitit: now it may start


def _run_local(
    registry: Registry,
    study: str,
    backend: Backend,
    run_filter: RunFilter,
    max_parallel: int | None,
    factory: JobFactory,
    outcome: SubmitOutcome,
    progress: Progress | None = None,
    stop: StopRequest | None = None,
    command: str = "submit",
) -> None:
    """The embedded scheduler: start ready runs up to --max-parallel, a fine-tune only once its pretrain
    completed, until nothing is running or startable (blocked fine-tunes are marked by the sync).

    A stop request ends it between two rounds: its running jobs are stopped and recorded INTERRUPTED.
    """
    limit = max(1, max_parallel or 1)
    backends = Backends(Path("."), backend)
    alerts_tried = time.monotonic()
    while True:
        if stop is not None and stop.is_set():
            raise interrupt_local(registry, study, backend, stop, command, started=set(outcome.job_ids))
        with registry.session() as session:
            synced = sync(session, study=study, backends=backends)
            retry = time.monotonic() - alerts_tried >= ALERT_RETRY_S  # not every second while a webhook is down
            deliveries = _alerts_after(session, study, synced, retry=retry)
            wanted = {repo.get_run(session, run_id).id for run_id in run_filter.run_ids}
            runs = repo.study_runs(session, study)
            running = [r for r in runs if r.status in ACTIVE and r.attempts and r.attempts[-1].executor == backend.name]
            ready = [
                r
                for r in runs
                if r.status == S.PLANNED
                and run_filter.matches(r, wanted)
                and (r.parent is None or r.parent.status == S.COMPLETED)
            ]
            # Pretrains first: each one unlocks fine-tunes, so the slots stay busy to the end.
            ready.sort(key=lambda r: (r.stage != "pretrain", r.created_at, r.id))
            chosen = throttle.startable(ready, running, limit, _stage_max_running)
            units = [submission.unit_for([r], None) for r in chosen]
        if deliveries:
            outcome.warnings = alerts.send(registry, deliveries)  # how the latest try went
            alerts_tried = time.monotonic()
        if progress is not None:
            with registry.session(write=False) as session:
                progress(repo.list_runs(session, study=study))
        if not running and not ready:
            outcome.failed = _ended_badly(registry, study, list(outcome.job_ids))  # its keys: the run ids
            return
        for unit in units:
            if stop is not None and stop.is_set():
                break
            submit_unit(registry, backend, unit, factory, outcome)
        if stop is not None:
            stop.wait(LOCAL_POLL_S)
        else:
            time.sleep(LOCAL_POLL_S)


def _ended_badly(registry: Registry, study: str, ran: Sequence[str]) -> dict[str, str]:
    """Of the runs a local submit ran, those that ended without a result (run id -> status)."""
    if not ran:
        return {}
    with registry.session(write=False) as session:
        runs = repo.select_runs(session, study, tuple(ran))
        return {run.id: str(run.status) for run in runs if run.status in ENDED_BADLY}


def _stage_max_running(run: Run) -> int | None:
    """The run's ``resources.max_running`` (its stage's limit of runs at once), as SLURM applies to arrays."""
    return resources_for_run(run.resources or {}).max_running


@dataclass
class CancelOutcome:
    cancelled: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    dry_run: bool = False
    executors: list[str] = field(default_factory=list)  # of the jobs cancelled (the CLI names their command)


def cancel(
    db: str | None,
    study: str | None = None,
    run_ids: Sequence[str] = (),
    group: str | None = None,
    backend: Backend | None = None,
    dry_run: bool = False,
) -> CancelOutcome:
    """Cancel planned, active and interrupted runs (by run, interval or study): scancel first, then record.
    ``dry_run``: only say which runs and jobs it would cancel."""
    if study is None and not run_ids and group is None:
        raise ConfigError("say what to cancel: --study, --run or --interval")
    with opened(db) as registry:
        with registry.session(write=False) as session:
            folder = _folder(session, study, run_ids)
        backends = Backends(folder, *([backend] if backend else []))
        if study is not None:
            prepare(registry, study, backends)
        with registry.session() as session:
            runs = repo.select_runs(session, study, run_ids, group, (S.PLANNED, *ACTIVE, S.INTERRUPTED))
            if not runs:
                raise NotFound(_nothing_to_cancel(session, study, run_ids, group))
            by_executor: dict[str, list[str]] = {}
            for run in runs:
                attempt = run.attempts[-1] if run.attempts else None
                if run.status in ACTIVE and attempt is not None and attempt.job_id:
                    by_executor.setdefault(attempt.executor, []).append(attempt.job_id)
            outcome = CancelOutcome(job_ids=[j for ids in by_executor.values() for j in ids], dry_run=dry_run,
                                    executors=sorted(by_executor))
            if dry_run:
                outcome.cancelled = sorted(run.id for run in runs)
                return outcome
            for executor, job_ids in by_executor.items():
                backends(executor).cancel(job_ids)
            for run in runs:
                repo.set_status(session, run, S.CANCELLED, reason="cancelled by user")
                attempt = run.attempts[-1] if run.attempts else None
                if attempt is not None and attempt.status in ACTIVE:
                    repo.set_attempt_status(attempt, S.CANCELLED)
                if attempt is not None and attempt.started_at is not None and attempt.ended_at is None:
                    repo.fill_attempt_times(attempt, None, utcnow())  # its elapsed time stops here
                outcome.cancelled.append(run.id)
        return outcome


def _nothing_to_cancel(session, study: str | None, run_ids: Sequence[str], group: str | None) -> str:
    """Why a cancel matched no cancellable run, naming what does exist."""
    matching = repo.select_runs(session, study, run_ids, group, None)
    where = f" in study {study!r}" if study else ""
    if group is not None and not matching:
        groups = repo.group_names(session, study)
        return f"no group {group!r}{where}; groups: {', '.join(map(repr, order_groups(groups, ()))) or 'none'}"
    states: dict[str, int] = {}
    for run in matching:
        states[run.status.value.lower()] = states.get(run.status.value.lower(), 0) + 1
    found = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "no run"
    return (f"nothing to cancel{where}: the matching runs are {found} "
            "(only planned, submitting, pending, running or interrupted runs can be cancelled)")


def retry(
    db: str | None,
    study: str | None = None,
    run_ids: Sequence[str] = (),
    statuses: Sequence[RunStatus] = DEFAULT_RETRY,
    executor: str = "auto",
    factory: JobFactory | None = None,
    backend: Backend | None = None,
    progress: Progress | None = None,
    stop: StopRequest | None = None,
) -> SubmitOutcome:
    """New attempts for failed, lost or timed-out runs (or any retryable --state, e.g. INVALID); blocked
    fine-tunes re-chain onto the new pretrain. An INVALID run's rejected result.json is set aside first
    (``result.json.rejected-<time>``), so its job computes a new one instead of returning the bad one."""
    with opened(db) as registry:
        name, folder = _study_folder(registry, study)
        backends = Backends(folder, *([backend] if backend else []))
        prepare(registry, name, backends)
        with registry.session() as session:
            chosen = repo.select_runs(session, name, run_ids, None, tuple(statuses) if not run_ids else None)
            retried = _reset_for_retry(session, chosen)
    if not retried:
        raise ConfigError(f"nothing to retry in study {name!r} (no run in {', '.join(map(str, statuses))})")
    return submit(
        db,
        name,
        executor=executor,
        run_filter=RunFilter(run_ids=tuple(retried)),
        factory=factory,
        backend=backend,
        progress=progress,
        stop=stop,
        command="retry",
    )


def retry_selection(db: str | None, study: str | None = None, run_ids: Sequence[str] = (),
                    statuses: Sequence[RunStatus] = DEFAULT_RETRY) -> tuple[str, list[str]]:
    """The study and the runs ``retry`` would start again (blocked fine-tunes included), changing nothing:
    for ``retry --dry-run`` and the confirmation before a retry (statuses as last recorded, no sync)."""
    with opened(db) as registry:
        name, _ = _study_folder(registry, study)
        with registry.session(write=False) as session:
            chosen = repo.select_runs(session, name, run_ids, None, tuple(statuses) if not run_ids else None)
            would = []
            for run in chosen:
                if not is_retryable(S(run.status)):
                    continue
                would.append(run.id)
                if run.stage == "pretrain":
                    would += [child.id for child in repo.children_of(session, run.id, (S.BLOCKED,))]
    return name, sorted(set(would))


def _reset_for_retry(session, runs: list[Run]) -> list[str]:
    retried = []
    for run in runs:
        if not is_retryable(S(run.status)):
            continue
        if run.status == S.INVALID:
            submission.set_aside_result(run)
        repo.set_status(session, run, S.PLANNED, reason="retry requested")
        retried.append(run.id)
        if run.stage == "pretrain":
            for child in repo.children_of(session, run.id, (S.BLOCKED, S.PLANNED)):
                repo.set_status(session, child, S.PLANNED, reason=f"re-chained onto the retry of {run.id}")
                retried.append(child.id)
    return retried


def _folder(session, study: str | None, run_ids: Sequence[str]) -> Path:
    if study is not None:
        return Path(repo.find_study(session, study).runs_dir) / "_submitit"
    if run_ids:
        return Path(repo.get_run(session, run_ids[0]).study.runs_dir) / "_submitit"
    return Path("_submitit")
