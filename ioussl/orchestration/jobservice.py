"""The services behind ``ioussl submit``, ``retry`` and ``cancel``: one short unit of work per step.

Every step commits on its own (intent, then sbatch, then job ids), so a crash at any point leaves the
registry in a state the next command repairs (see submission.py). Each command first adopts orphaned
intents and syncs, so it decides on fresh statuses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from ioussl.errors import ConfigError, NotFound, SubmissionError
from ioussl.orchestration import planning, slurm, submission
from ioussl.orchestration.backends import Backend, Unit, backend_for_attempts, choose_backend, resolve_executor
from ioussl.orchestration.registry import open_registry, repo
from ioussl.orchestration.registry.db import Registry
from ioussl.orchestration.registry.models import Run, Study
from ioussl.orchestration.report import order_groups
from ioussl.orchestration.status import RunStatus, is_retryable
from ioussl.orchestration.submission import JobFactory, RunFilter, SubmitOutcome
from ioussl.orchestration.sync import SyncOutcome, sync

S = RunStatus
ACTIVE = (S.SUBMITTING, S.PENDING, S.RUNNING)
LOCAL_POLL_S = 1.0


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
) -> SubmitOutcome:
    """Submit every planned run of the study (that the filter keeps) whose pretrain can still deliver."""
    registry = open_registry(db, create=False)
    try:
        name, folder = _study_folder(registry, study)
        executor, fell_back = (backend.name, None) if backend else resolve_executor(executor)
        backend = backend or choose_backend(executor, folder)
        backends = Backends(folder, backend)
        outcome = SubmitOutcome(study=name, executor=backend.name, dry_run=dry_run, fell_back=fell_back)
        if not dry_run:
            prepare(registry, name, backends, outcome)
        units = _plan(registry, name, run_filter, outcome)
        if backend.name == "slurm":
            _refuse_placeholders(registry, name, units)
        if dry_run or not units:
            _describe_dependencies(units, outcome)
            return outcome
        factory = factory or submission.default_job_factory()
        if backend.name == "local":
            _run_local(registry, name, backend, run_filter, max_parallel, factory, outcome)
        else:
            for unit in units:
                submit_unit(registry, backend, unit, factory, outcome)
        return outcome
    finally:
        registry.dispose()


def prepare(registry: Registry, study: str, backends: Backends, outcome: SubmitOutcome | None = None) -> SyncOutcome:
    """Adopt or revert intents left by a killed submit, then sync: decisions then rest on fresh statuses."""

    def adopt_once() -> int:
        with registry.session() as session:
            adopted, reverted, young = submission.adopt_orphans(session, backends)
        if outcome is not None:
            outcome.adopted += adopted
            outcome.reverted += reverted
        return young

    submission.wait_for_young_intents(adopt_once)
    with registry.session() as session:
        return sync(session, study=study, backends=backends, folder=backends.folder)


def _refuse_placeholders(registry: Registry, study: str, units: Sequence[Unit]) -> None:
    """SLURM would reject a template value such as account FILL-IN-YOUR-GRANT: say which and where first."""
    found: dict[str, str] = {}
    for unit in units:
        found.update(slurm.placeholders(unit.resources))
    if found:
        with registry.session() as session:
            source = planning.profile_source(repo.find_study(session, study).spec.get("raw") or {})
        message = slurm.placeholder_message(found, f"study {study!r}, {source}")
        raise ConfigError(f"{message}, then run `ioussl plan grid` again (planned runs pick it up)")


def _study_folder(registry: Registry, study: str | None) -> tuple[str, Path]:
    """The study to act on (the only one if not named) and its submitit folder."""
    with registry.session() as session:
        row = submission.find_submit_study(session, study)
        return row.name, Path(row.runs_dir) / "_submitit"


def sync_studies(db: str | None, study: str | None = None) -> list[SyncOutcome]:
    """Adopt orphans, query the scheduler once per study, apply transitions and ingest run files."""
    registry = open_registry(db, create=False)
    try:
        with registry.session() as session:
            studies = [(s.name, s.runs_dir) for s in session.scalars(select(Study))
                       if study is None or s.name == study]
        return [prepare(registry, name, Backends(Path(runs_dir) / "_submitit")) for name, runs_dir in studies]
    finally:
        registry.dispose()


def _study_runs(session, study: str) -> list[Run]:  # type: ignore[no-untyped-def]
    query = (
        select(Run)
        .join(Study, Run.study_id == Study.id)
        .where(Study.name == study)
        .options(selectinload(Run.attempts), selectinload(Run.parent))
    )
    return list(session.scalars(query))


def _plan(registry: Registry, study: str, run_filter: RunFilter, outcome: SubmitOutcome) -> list[Unit]:
    with registry.session() as session:
        wanted = {repo.get_run(session, run_id).id for run_id in run_filter.run_ids}
        units = submission.plan_units(_study_runs(session, study), run_filter, wanted, outcome)
    outcome.units = units
    return units


def _describe_dependencies(units: Sequence[Unit], outcome: SubmitOutcome) -> None:
    """For --dry-run: what each unit would wait for (a pretrain in this submit has no job id yet)."""
    in_batch = {unit.run_ids[0] for unit in units if unit.stage == "pretrain"}
    for unit in units:
        if unit.parent_id is None:
            outcome.dependencies[unit.job_name] = None
        elif unit.parent_id in in_batch:
            outcome.dependencies[unit.job_name] = f"afterok:<job of ioussl-{unit.parent_id}>"
        else:
            outcome.dependencies[unit.job_name] = f"afterok:<current job of {unit.parent_id}> (or none if done)"


def submit_unit(registry: Registry, backend: Backend, unit: Unit, factory: JobFactory, outcome: SubmitOutcome) -> None:
    """Intent (committed) -> sbatch -> job ids (committed). A rejected sbatch leaves the runs PLANNED."""
    with registry.session() as session:
        dependency, ready = submission.dependency_for(session, unit)
        if not ready:
            outcome.skipped += [(run_id, "its pretrain has no job id yet") for run_id in unit.run_ids]
            return
        submission.write_run_files(session.get(Run, run_id) for run_id in unit.run_ids)
        calls = submission.job_calls(session, unit, factory)
        submission.record_intent(session, unit, backend.name, dependency)
    try:
        job_ids = backend.submit(unit, calls, dependency)
    except SubmissionError as exc:
        with registry.session() as session:
            submission.record_rejection(session, unit, str(exc))
        raise
    outcome.sbatch_calls += 1 if backend.name == "slurm" else len(calls)
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
) -> None:
    """The embedded scheduler: start ready runs up to --max-parallel, a fine-tune only once its pretrain
    completed, until nothing is running or startable (blocked fine-tunes are marked by the sync)."""
    limit = max(1, max_parallel or 1)
    backends = Backends(Path("."), backend)
    while True:
        with registry.session() as session:
            sync(session, study=study, backends=backends)
            wanted = {repo.get_run(session, run_id).id for run_id in run_filter.run_ids}
            runs = _study_runs(session, study)
            running = [r for r in runs if r.status in ACTIVE and r.attempts and r.attempts[-1].executor == "local"]
            ready = [
                r
                for r in runs
                if r.status == S.PLANNED
                and run_filter.matches(r, wanted)
                and (r.parent is None or r.parent.status == S.COMPLETED)
            ]
            # Pretrains first: each one unlocks fine-tunes, so the slots stay busy to the end.
            ready.sort(key=lambda r: (r.stage != "pretrain", r.created_at, r.id))
            units = [submission.unit_for([r], None) for r in ready[: max(0, limit - len(running))]]
        if not running and not ready:
            return
        for unit in units:
            submit_unit(registry, backend, unit, factory, outcome)
        time.sleep(LOCAL_POLL_S)


@dataclass
class CancelOutcome:
    cancelled: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)


def cancel(
    db: str | None,
    study: str | None = None,
    run_ids: Sequence[str] = (),
    group: str | None = None,
    backend: Backend | None = None,
) -> CancelOutcome:
    """Cancel planned and active runs (by run, interval or study): scancel first, then record."""
    if study is None and not run_ids and group is None:
        raise ConfigError("say what to cancel: --study, --run or --interval")
    registry = open_registry(db, create=False)
    try:
        with registry.session() as session:
            folder = _folder(session, study, run_ids)
        backends = Backends(folder, *([backend] if backend else []))
        if study is not None:
            prepare(registry, study, backends)
        with registry.session() as session:
            runs = _select(session, study, run_ids, group, (S.PLANNED, *ACTIVE))
            if not runs:
                raise NotFound(_nothing_to_cancel(session, study, run_ids, group))
            by_executor: dict[str, list[str]] = {}
            for run in runs:
                attempt = run.attempts[-1] if run.attempts else None
                if run.status in ACTIVE and attempt is not None and attempt.job_id:
                    by_executor.setdefault(attempt.executor, []).append(attempt.job_id)
            for executor, job_ids in by_executor.items():
                backends(executor).cancel(job_ids)
            outcome = CancelOutcome(job_ids=[j for ids in by_executor.values() for j in ids])
            for run in runs:
                repo.set_status(session, run, S.CANCELLED, reason="cancelled by user")
                if run.attempts and run.attempts[-1].status in ACTIVE:
                    run.attempts[-1].status = S.CANCELLED
                outcome.cancelled.append(run.id)
        return outcome
    finally:
        registry.dispose()


def _nothing_to_cancel(session, study: str | None, run_ids: Sequence[str], group: str | None) -> str:  # type: ignore[no-untyped-def]
    """Why a cancel matched no cancellable run, naming what does exist."""
    matching = _select(session, study, run_ids, group, None)
    where = f" in study {study!r}" if study else ""
    if group is not None and not matching:
        query = select(Run.group).join(Study, Run.study_id == Study.id).distinct()
        groups = session.scalars(query.where(Study.name == study) if study else query).all()
        return f"no group {group!r}{where}; groups: {', '.join(map(repr, order_groups(groups, ()))) or 'none'}"
    states: dict[str, int] = {}
    for run in matching:
        states[run.status.value.lower()] = states.get(run.status.value.lower(), 0) + 1
    found = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "no run"
    return (f"nothing to cancel{where}: the matching runs are {found} "
            "(only planned, submitting, pending or running runs can be cancelled)")


def retry(
    db: str | None,
    study: str | None = None,
    run_ids: Sequence[str] = (),
    statuses: Sequence[RunStatus] = (S.FAILED, S.LOST, S.TIMEOUT),
    executor: str = "auto",
    factory: JobFactory | None = None,
    backend: Backend | None = None,
) -> SubmitOutcome:
    """New attempts for failed, lost or timed-out runs; blocked fine-tunes re-chain onto the new pretrain."""
    registry = open_registry(db, create=False)
    try:
        name, folder = _study_folder(registry, study)
        backends = Backends(folder, *([backend] if backend else []))
        prepare(registry, name, backends)
        with registry.session() as session:
            chosen = _select(session, name, run_ids, None, tuple(statuses) if not run_ids else None)
            retried = _reset_for_retry(session, chosen)
    finally:
        registry.dispose()
    if not retried:
        raise ConfigError(f"nothing to retry in study {name!r} (no run in {', '.join(map(str, statuses))})")
    return submit(
        db,
        name,
        executor=executor,
        run_filter=RunFilter(run_ids=tuple(retried)),
        factory=factory,
        backend=backend,
    )


def _reset_for_retry(session, runs: list[Run]) -> list[str]:  # type: ignore[no-untyped-def]
    retried = []
    for run in runs:
        if not is_retryable(S(run.status)):
            continue
        repo.set_status(session, run, S.PLANNED, reason="retry requested")
        retried.append(run.id)
        if run.stage == "pretrain":
            waiting = (S.BLOCKED, S.PLANNED)
            children = session.scalars(select(Run).where(Run.parent_id == run.id, Run.status.in_(waiting)))
            for child in children:
                repo.set_status(session, child, S.PLANNED, reason=f"re-chained onto the retry of {run.id}")
                retried.append(child.id)
    return retried


def _select(
    session,
    study: str | None,
    run_ids: Sequence[str],
    group: str | None,  # type: ignore[no-untyped-def]
    statuses: Sequence[RunStatus] | None,
) -> list[Run]:
    query = select(Run).join(Study, Run.study_id == Study.id).options(selectinload(Run.attempts))
    if study is not None:
        query = query.where(Study.name == study)
    if run_ids:
        query = query.where(Run.id.in_([repo.get_run(session, r).id for r in run_ids]))
    if group is not None:
        query = query.where(Run.group == group)
    if statuses is not None:
        query = query.where(Run.status.in_(list(statuses)))
    return list(session.scalars(query))


def _folder(session, study: str | None, run_ids: Sequence[str]) -> Path:  # type: ignore[no-untyped-def]
    if study is not None:
        return Path(repo.find_study(session, study).runs_dir) / "_submitit"
    if run_ids:
        return Path(repo.get_run(session, run_ids[0]).study.runs_dir) / "_submitit"
    return Path("_submitit")
